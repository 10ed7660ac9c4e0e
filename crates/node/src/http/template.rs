//! The generic profile's request body template (`--http-body-template`):
//! the provider's own field names around `{{to}}`, `{{body}}`, `{{sender}}`,
//! `{{message_id}}`, `{{attempt}}` and `{{callback_url}}`. Each value is
//! escaped for where it goes: as the inside of a JSON string for a JSON
//! body, percent-encoded for a form.

/// A message's field a template may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The number.
    To,
    /// The text.
    Body,
    /// The sender.
    Sender,
    /// `BATCH.INDEX`.
    MessageId,
    /// The attempt's number.
    Attempt,
    /// The status callback URL ("" when none).
    CallbackUrl,
}

impl Field {
    const ALL: [(&'static str, Field); 6] = [
        ("to", Field::To),
        ("body", Field::Body),
        ("sender", Field::Sender),
        ("message_id", Field::MessageId),
        ("attempt", Field::Attempt),
        ("callback_url", Field::CallbackUrl),
    ];
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; an unknown or unclosed `{{…}}` is an error that names it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("an unclosed {{{{ at {:?}", truncate(&rest[open..])))?;
            let name = after[..close].trim();
            let field = Field::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!(
                        "{{{{{name}}}}} is not a field; use {}",
                        Field::ALL
                            .iter()
                            .map(|(n, _)| format!("{{{{{n}}}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.contains(&Part::Field(Field::To)) {
            return Err("it never names {{to}}: the provider would not know where to send".into());
        }
        Ok(Template { parts })
    }

    /// The body for a message whose fields `value` gives, escaped for JSON
    /// (`json`) or for a form.
    pub fn render(&self, json: bool, value: impl Fn(Field) -> String) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => {
                    let v = value(*f);
                    if json {
                        let quoted = serde_json::to_string(&v).expect("a string serializes");
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    } else {
                        out.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
                    }
                }
            }
        }
        out
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(20) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(f: Field) -> String {
        match f {
            Field::To => "+15550001".into(),
            Field::Body => "say \"hi\" & bye\n".into(),
            Field::Sender => "ACME".into(),
            _ => "x".into(),
        }
    }

    #[test]
    fn fields_are_escaped_for_where_they_go() {
        let t = Template::parse(r#"{"dest":"{{to}}","text":"{{ body }}","from":"{{sender}}"}"#)
            .unwrap();
        let body = t.render(true, values);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["text"], "say \"hi\" & bye\n");
        assert_eq!(v["dest"], "+15550001");
        let f = Template::parse("dest={{to}}&text={{body}}").unwrap();
        assert_eq!(
            f.render(false, values),
            "dest=%2B15550001&text=say+%22hi%22+%26+bye%0A"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(
            Template::parse("{{to}} {{phone}}")
                .unwrap_err()
                .contains("{{phone}} is not a field")
        );
        assert!(
            Template::parse("{{to}} {{body")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            Template::parse("text={{body}}")
                .unwrap_err()
                .contains("{{to}}")
        );
    }
}
