//! The SMPP gateway's settings: `--gateway smpp://SYSTEM_ID:PASSWORD@HOST:PORT`
//! (or `smpps://` for TLS), with options as flags, `SMSMESH_SMPP_*`
//! variables, or the URL's query (which wins).

use std::time::Duration;

use rusmpp_core::values::{Npi, Ton};

/// Flags of the SMPP gateway; each may also be given in the `--gateway` URL's
/// query under the name in brackets, e.g. `?window=32&rate=100`.
#[derive(clap::Args, Debug, Clone)]
pub struct SmppArgs {
    /// SMPP: bind type [bind]: transceiver, transmitter (receipts then need a
    /// receiver bind elsewhere) or receiver.
    #[arg(
        long = "smpp-bind",
        env = "SMSMESH_SMPP_BIND",
        default_value = "transceiver"
    )]
    pub bind: String,
    /// SMPP: system_type sent in the bind [system_type].
    #[arg(
        long = "smpp-system-type",
        env = "SMSMESH_SMPP_SYSTEM_TYPE",
        default_value = ""
    )]
    pub system_type: String,
    /// SMPP: most submit_sm outstanding on the bind at once [window].
    #[arg(
        long = "smpp-window",
        env = "SMSMESH_SMPP_WINDOW",
        default_value_t = 64
    )]
    pub window: u32,
    /// SMPP: most segments submitted a second on this connector; 0 for no limit [rate].
    #[arg(long = "smpp-rate", env = "SMSMESH_SMPP_RATE", default_value_t = 0)]
    pub rate: u32,
    /// SMPP: enquire_link interval [enquire_link].
    #[arg(long = "smpp-enquire-link", env = "SMSMESH_SMPP_ENQUIRE_LINK", default_value = "30s", value_parser = humantime::parse_duration)]
    pub enquire_link: Duration,
    /// SMPP: how long to wait for a response (submit_sm_resp, bind_resp), checked every eighth of it (5-250 ms) [response_timeout].
    /// A submit_sm with no response by then has an unknown outcome.
    #[arg(long = "smpp-response-timeout", env = "SMSMESH_SMPP_RESPONSE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,
    /// SMPP: how long the connector pauses after ESME_RTHROTTLED [throttle_pause].
    #[arg(long = "smpp-throttle-pause", env = "SMSMESH_SMPP_THROTTLE_PAUSE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub throttle_pause: Duration,
    /// SMPP: source TON; default chosen from the sender's form [source_ton].
    #[arg(long = "smpp-source-ton", env = "SMSMESH_SMPP_SOURCE_TON")]
    pub source_ton: Option<u8>,
    /// SMPP: source NPI; default chosen from the sender's form [source_npi].
    #[arg(long = "smpp-source-npi", env = "SMSMESH_SMPP_SOURCE_NPI")]
    pub source_npi: Option<u8>,
    /// SMPP: sender (source_addr) of messages that name none [sender]: an
    /// alphanumeric sender of up to 11 characters, a short code or an E.164 number.
    #[arg(
        long = "smpp-sender",
        env = "SMSMESH_SMPP_SENDER",
        default_value = "smsmesh"
    )]
    pub sender: String,
    /// SMPP: ask for delivery receipts (registered_delivery 1) [receipts].
    #[arg(long = "smpp-receipts", env = "SMSMESH_SMPP_RECEIPTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub receipts: bool,
    /// SMPP: the form of the provider's message ids, so that the id in a
    /// receipt matches the one in submit_sm_resp [ids]: hex, decimal or exact.
    #[arg(long = "smpp-ids", env = "SMSMESH_SMPP_IDS", default_value = "exact")]
    pub ids: String,
    /// SMPP: the name receipts are matched under, the same for every bind to
    /// one SMSC (message ids are unique per SMSC) [provider]; default: the
    /// SMSC's address. Give it when binds reach one SMSC by different
    /// addresses, e.g. a transmitter on one host and a receiver on another.
    #[arg(long = "smpp-provider", env = "SMSMESH_SMPP_PROVIDER")]
    pub provider: Option<String>,
}

/// Which bind the connector asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindType {
    /// Submits and receives on one bind.
    Transceiver,
    /// Submits only.
    Transmitter,
    /// Receives (receipts) only.
    Receiver,
}

/// How provider ids are normalised before they are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdForm {
    /// As given.
    Exact,
    /// Hexadecimal: case and leading zeros do not matter.
    Hex,
    /// Decimal: leading zeros do not matter.
    Decimal,
}

impl IdForm {
    /// The id in the one form both sides are compared in.
    pub fn normalise(self, id: &str) -> String {
        let id = id.trim();
        match self {
            IdForm::Exact => id.to_string(),
            IdForm::Hex => {
                let t = id.trim_start_matches('0').to_ascii_lowercase();
                if t.is_empty() { "0".into() } else { t }
            }
            IdForm::Decimal => {
                let t = id.trim_start_matches('0');
                if t.is_empty() {
                    "0".into()
                } else {
                    t.to_string()
                }
            }
        }
    }
}

/// Everything a connector needs, checked.
#[derive(Clone, Debug)]
pub struct SmppConfig {
    /// `smpp://HOST:PORT` or `smpps://HOST:PORT`, without credentials.
    pub address: String,
    /// The bind's system_id (the URL's user).
    pub system_id: String,
    /// The bind's password.
    pub password: String,
    /// The bind's system_type.
    pub system_type: String,
    /// Which bind.
    pub bind: BindType,
    /// Most submit_sm outstanding.
    pub window: u32,
    /// Most segments a second (0: no limit).
    pub rate: u32,
    /// Between enquire_links.
    pub enquire_link: Duration,
    /// Longest wait for a response.
    pub response_timeout: Duration,
    /// Pause after ESME_RTHROTTLED.
    pub throttle_pause: Duration,
    /// The default sender.
    pub sender: Sender,
    /// Whether receipts are asked for.
    pub receipts: bool,
    /// The provider's id form.
    pub ids: IdForm,
    /// The name receipts are matched under.
    pub provider: String,
}

/// A sender id, with the TON/NPI it is sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// source_addr as sent (an E.164 number without its '+').
    pub addr: String,
    /// Its type of number.
    pub ton: Ton,
    /// Its numbering plan.
    pub npi: Npi,
}

impl Sender {
    /// Checks `s` and picks its TON/NPI from its form (unless given):
    /// an E.164 number is international/ISDN, 3 to 8 digits a short code
    /// (national/ISDN), anything else alphanumeric (up to 11 GSM characters).
    pub fn parse(s: &str, ton: Option<u8>, npi: Option<u8>) -> Result<Sender, String> {
        use smsmesh::sms::SenderForm;
        let form = smsmesh::sms::sender_form("sender", s).map_err(|e| e.to_string())?;
        let (addr, t, n) = match form {
            SenderForm::International => (s[1..].to_string(), Ton::International, Npi::Isdn),
            SenderForm::ShortCode => (s.to_string(), Ton::National, Npi::Isdn),
            SenderForm::Alphanumeric => (s.to_string(), Ton::Alphanumeric, Npi::Unknown),
        };
        Ok(Sender {
            addr,
            ton: ton.map_or(t, Ton::from),
            npi: npi.map_or(n, Npi::from),
        })
    }
}

impl SmppArgs {
    /// The flags as their defaults and `SMSMESH_SMPP_*` variables give them,
    /// with no command line: for a gateway built in code (tests, the testkit).
    pub fn defaults() -> SmppArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            smpp: SmppArgs,
        }
        <Cli as clap::Parser>::parse_from(["smsnode"]).smpp
    }
}

impl SmppConfig {
    /// Reads `url` (`smpp://SYSTEM_ID:PASSWORD@HOST:PORT?option=value`) over `args`.
    pub fn parse(url: &str, args: &SmppArgs) -> Result<SmppConfig, String> {
        let u = url::Url::parse(url).map_err(|e| format!("--gateway {url:?}: {e}"))?;
        if !matches!(u.scheme(), "smpp" | "smpps") {
            return Err(format!(
                "--gateway {url:?}: the scheme must be smpp:// or smpps://"
            ));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("--gateway: {:?} names no host", redact(&u)))?;
        let port = u.port().unwrap_or(2775);
        let system_id = percent(u.username())?;
        if system_id.is_empty() || system_id.len() > 15 {
            return Err(
                "--gateway: the system_id (the URL's user) must be 1 to 15 characters".into(),
            );
        }
        let password = percent(u.password().unwrap_or(""))?;
        if password.len() > 8 {
            return Err("--gateway: the password must be at most 8 characters (SMPP 3.4)".into());
        }
        let mut a = args.clone();
        for (k, v) in u.query_pairs() {
            let bad = |e: String| format!("--gateway query {k}={v:?}: {e}");
            let num = |v: &str| v.parse::<u32>().map_err(|e| bad(e.to_string()));
            let dur = |v: &str| humantime::parse_duration(v).map_err(|e| bad(e.to_string()));
            match &*k {
                "bind" => a.bind = v.to_string(),
                "system_type" => a.system_type = v.to_string(),
                "window" => a.window = num(&v)?,
                "rate" => a.rate = num(&v)?,
                "enquire_link" => a.enquire_link = dur(&v)?,
                "response_timeout" => a.response_timeout = dur(&v)?,
                "throttle_pause" => a.throttle_pause = dur(&v)?,
                "source_ton" => {
                    a.source_ton = Some(num(&v)?.try_into().map_err(|_| bad("above 255".into()))?)
                }
                "source_npi" => {
                    a.source_npi = Some(num(&v)?.try_into().map_err(|_| bad("above 255".into()))?)
                }
                "sender" => a.sender = v.to_string(),
                "receipts" => a.receipts = v.parse().map_err(|_| bad("true or false".into()))?,
                "ids" => a.ids = v.to_string(),
                "provider" => a.provider = Some(v.to_string()),
                _ => {
                    return Err(format!(
                        "--gateway: unknown option {k:?} in the URL's query"
                    ));
                }
            }
        }
        let bind = match a.bind.as_str() {
            "transceiver" | "trx" => BindType::Transceiver,
            "transmitter" | "tx" => BindType::Transmitter,
            "receiver" | "rx" => BindType::Receiver,
            b => {
                return Err(format!(
                    "SMPP bind {b:?}: transceiver, transmitter or receiver"
                ));
            }
        };
        if a.window == 0 {
            return Err("SMPP window: at least 1".into());
        }
        if a.system_type.len() > 12 {
            return Err("SMPP system_type: at most 12 characters".into());
        }
        let ids = match a.ids.as_str() {
            "exact" => IdForm::Exact,
            "hex" => IdForm::Hex,
            "decimal" => IdForm::Decimal,
            f => return Err(format!("SMPP ids {f:?}: exact, hex or decimal")),
        };
        let address = format!("{}://{host}:{port}", u.scheme());
        let provider = match a.provider.as_deref().map(str::trim) {
            None => address.clone(),
            Some("") => {
                return Err(
                    "SMPP provider: give a name, or leave it out for the SMSC's address".into(),
                );
            }
            Some(p) if p.len() > 200 => return Err("SMPP provider: at most 200 characters".into()),
            Some(p) => p.to_string(),
        };
        Ok(SmppConfig {
            provider,
            address,
            system_id,
            password,
            system_type: a.system_type,
            bind,
            window: a.window,
            rate: a.rate,
            enquire_link: a.enquire_link,
            response_timeout: a.response_timeout,
            throttle_pause: a.throttle_pause,
            sender: Sender::parse(&a.sender, a.source_ton, a.source_npi)?,
            receipts: a.receipts,
            ids,
        })
    }
}

/// The URL without its password, for messages.
fn redact(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_password(None);
    u.to_string()
}

/// A URL's user or password, percent-decoded.
fn percent(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "--gateway: the credentials are not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SmppArgs {
        SmppArgs::defaults()
    }

    #[test]
    fn the_url_gives_credentials_and_its_query_overrides_flags() {
        let c = SmppConfig::parse(
            "smpps://esme%401:s3cret@127.0.0.1:3000?window=8&rate=250&ids=hex&sender=%2B14155550123",
            &args(),
        )
        .unwrap();
        assert_eq!(c.address, "smpps://127.0.0.1:3000");
        assert_eq!(
            (c.system_id.as_str(), c.password.as_str()),
            ("esme@1", "s3cret")
        );
        assert_eq!((c.window, c.rate, c.ids), (8, 250, IdForm::Hex));
        assert_eq!(c.sender.addr, "14155550123");
        assert_eq!(
            (c.sender.ton, c.sender.npi),
            (Ton::International, Npi::Isdn)
        );
        assert_eq!(c.bind, BindType::Transceiver);
        assert_eq!(
            SmppConfig::parse("smpp://a@h", &args()).unwrap().address,
            "smpp://h:2775"
        );
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        for (url, want) in [
            ("http://a:b@h:1", "scheme"),
            ("smpp://h:1", "system_id"),
            ("smpp://a:123456789@h:1", "password"),
            ("smpp://a@h:1?window=0", "window"),
            ("smpp://a@h:1?windows=3", "unknown option \"windows\""),
            ("smpp://a@h:1?bind=both", "bind"),
            ("smpp://a@h:1?sender=TwelveLetter", "alphanumeric"),
            ("smpp://a@h:1?sender=12", "short code"),
            ("smpp://a@h:1?ids=octal", "ids"),
        ] {
            let e = SmppConfig::parse(url, &args()).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn senders_take_their_ton_and_npi_from_their_form() {
        let s = Sender::parse("ACME", None, None).unwrap();
        assert_eq!((s.ton, s.npi), (Ton::Alphanumeric, Npi::Unknown));
        let s = Sender::parse("12345", None, None).unwrap();
        assert_eq!((s.ton, s.npi), (Ton::National, Npi::Isdn));
        let s = Sender::parse("12345", Some(3), Some(0)).unwrap();
        assert_eq!((s.ton, s.npi), (Ton::NetworkSpecific, Npi::Unknown));
    }

    #[test]
    fn ids_compare_in_one_form() {
        assert_eq!(IdForm::Hex.normalise("00A1b"), "a1b");
        assert_eq!(IdForm::Decimal.normalise("000120"), "120");
        assert_eq!(IdForm::Exact.normalise("00A1"), "00A1");
    }
}
