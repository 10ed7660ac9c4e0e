//! The classes of traffic (`smsmesh.v1.Priority`): their order, names,
//! proto values and SMPP `priority_flag`, in one place.

use crate::pb;

/// A batch's class, most urgent first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Alerts: always first; needs the `smsmesh:emergency` scope.
    Emergency = 0,
    /// Before normal traffic.
    High = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Last; an operator may pause it.
    Bulk = 3,
}

/// How many classes there are.
pub const CLASSES: usize = 4;

impl Class {
    /// Every class, most urgent first.
    pub const ALL: [Class; CLASSES] = [Class::Emergency, Class::High, Class::Normal, Class::Bulk];

    /// Its place in [`Class::ALL`] (0: most urgent).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class of a proto `Priority` value (UNSPECIFIED is normal); an
    /// error naming `field` and the values allowed for anything else.
    pub fn from_proto(v: i32, field: &str) -> Result<Class, String> {
        match pb::Priority::try_from(v) {
            Ok(pb::Priority::Unspecified | pb::Priority::Normal) => Ok(Class::Normal),
            Ok(pb::Priority::Emergency) => Ok(Class::Emergency),
            Ok(pb::Priority::High) => Ok(Class::High),
            Ok(pb::Priority::Bulk) => Ok(Class::Bulk),
            Err(_) => Err(format!(
                "{field}: {v} is not a priority (1 EMERGENCY, 2 HIGH, 3 NORMAL, 4 BULK; 0 means NORMAL)"
            )),
        }
    }

    /// Its proto value.
    pub fn to_proto(self) -> pb::Priority {
        match self {
            Class::Emergency => pb::Priority::Emergency,
            Class::High => pb::Priority::High,
            Class::Normal => pb::Priority::Normal,
            Class::Bulk => pb::Priority::Bulk,
        }
    }

    /// Its name, as metrics label it and smsmon takes it.
    pub fn name(self) -> &'static str {
        match self {
            Class::Emergency => "emergency",
            Class::High => "high",
            Class::Normal => "normal",
            Class::Bulk => "bulk",
        }
    }

    /// The class named `s` (as [`Class::name`] writes it, any case).
    pub fn parse(s: &str) -> Result<Class, String> {
        Class::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("{s:?} is not a class: emergency, high, normal or bulk"))
    }

    /// SMPP 3.4 `priority_flag`: 3 for emergency, 2 for high, 0 otherwise.
    /// (In GSM every non-zero value is "priority"; ANSI-136 and IS-95 read
    /// 2 as urgent and 3 as emergency / very urgent.)
    pub fn smpp_priority_flag(self) -> u8 {
        match self {
            Class::Emergency => 3,
            Class::High => 2,
            Class::Normal | Class::Bulk => 0,
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_values_and_names_round_trip() {
        for c in Class::ALL {
            assert_eq!(Class::from_proto(c.to_proto() as i32, "p"), Ok(c));
            assert_eq!(Class::parse(&c.name().to_uppercase()), Ok(c));
        }
        assert_eq!(Class::from_proto(0, "p"), Ok(Class::Normal));
        let e = Class::from_proto(9, "priority").unwrap_err();
        assert!(e.starts_with("priority: 9 is not a priority"), "{e}");
        assert!(Class::parse("urgent").is_err());
        assert!(Class::Emergency < Class::Bulk);
    }
}
