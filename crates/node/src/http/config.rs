//! The HTTP gateway's settings: `--gateway https://[USER:PASSWORD@]HOST/PATH`
//! (the provider's send endpoint, or its API base for a profile that knows
//! the path), with options as flags, `SMSMESH_HTTP_*` variables, or the
//! URL's query (which wins, and is not sent).

use std::time::Duration;

/// Flags of the HTTP gateway; each may also be given in the `--gateway`
/// URL's query under the name in brackets, e.g. `?profile=twilio&rate=50`.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// HTTP: the provider's API [profile]: `generic` (a POST of the message
    /// as JSON or a form to the URL) or `twilio` (Twilio's Messages API: the
    /// URL's user is the account SID, its password the auth token).
    #[arg(
        long = "http-profile",
        env = "SMSMESH_HTTP_PROFILE",
        default_value = "generic"
    )]
    pub profile: String,
    /// HTTP, generic profile: how the message is sent [format]: `json` (to,
    /// body, sender, message_id, attempt) or `form` (the same fields).
    #[arg(
        long = "http-format",
        env = "SMSMESH_HTTP_FORMAT",
        default_value = "json"
    )]
    pub format: String,
    /// HTTP, generic profile: where the provider's message id is in its JSON
    /// answer, as a JSON pointer [id_field]; empty: it gives none.
    #[arg(
        long = "http-id-field",
        env = "SMSMESH_HTTP_ID_FIELD",
        default_value = "/id"
    )]
    pub id_field: String,
    /// HTTP, generic profile: a file holding a bearer token sent as
    /// `Authorization: Bearer` (the URL's user and password are sent as basic auth instead).
    #[arg(
        id = "http_bearer_file",
        long = "http-bearer-file",
        env = "SMSMESH_HTTP_BEARER_FILE"
    )]
    pub bearer_file: Option<std::path::PathBuf>,
    /// HTTP, generic profile: a file holding a secret each request's body is
    /// signed with: `X-Signature: sha256=HEX`, the HMAC-SHA256 of the body.
    #[arg(
        id = "http_hmac_secret_file",
        long = "http-hmac-secret-file",
        env = "SMSMESH_HTTP_HMAC_SECRET_FILE"
    )]
    pub hmac_secret_file: Option<std::path::PathBuf>,
    /// HTTP: most requests a second on this connector; 0 for no limit [rate].
    #[arg(
        id = "http_rate",
        long = "http-rate",
        env = "SMSMESH_HTTP_RATE",
        default_value_t = 0
    )]
    pub rate: u32,
    /// HTTP: how long a request may take [timeout]. One with no answer by
    /// then has an unknown outcome (the provider may have sent it).
    #[arg(id = "http_timeout", long = "http-timeout", env = "SMSMESH_HTTP_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// HTTP: how long the connector pauses after a 429 or 503 that gives no
    /// Retry-After [throttle_pause].
    #[arg(id = "http_throttle_pause", long = "http-throttle-pause", env = "SMSMESH_HTTP_THROTTLE_PAUSE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub throttle_pause: Duration,
    /// HTTP: the sender of messages that name none [sender] (Twilio's `From`).
    #[arg(
        id = "http_sender",
        long = "http-sender",
        env = "SMSMESH_HTTP_SENDER",
        default_value = ""
    )]
    pub sender: String,
    /// HTTP: a URL the provider is asked to post delivery status to
    /// [status_callback] (Twilio's `StatusCallback`; `callback_url` in the
    /// generic JSON).
    #[arg(
        id = "http_status_callback",
        long = "http-status-callback",
        env = "SMSMESH_HTTP_STATUS_CALLBACK"
    )]
    pub status_callback: Option<String>,
    /// HTTP: serve the provider's delivery status callbacks on ADDR
    /// (`/twilio`, `/generic`); the provider must reach it at the
    /// --http-status-callback URL (through a proxy or load balancer, any
    /// node's will do).
    #[arg(
        id = "http_webhook_listen",
        long = "http-webhook-listen",
        env = "SMSMESH_HTTP_WEBHOOK_LISTEN"
    )]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// HTTP: the secret generic callbacks are signed with (`X-Smsmesh-Signature:
    /// sha256=HEX`, an HMAC-SHA256 of the body).
    #[arg(
        id = "http_webhook_secret_file",
        long = "http-webhook-secret-file",
        env = "SMSMESH_HTTP_WEBHOOK_SECRET_FILE"
    )]
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// HTTP, generic profile: a file holding the request body with the
    /// provider's own field names, where {{to}}, {{body}}, {{sender}},
    /// {{message_id}}, {{attempt}} and {{callback_url}} stand for the
    /// message's (escaped for JSON or for a form, as --http-format says).
    #[arg(
        id = "http_body_template",
        long = "http-body-template",
        env = "SMSMESH_HTTP_BODY_TEMPLATE"
    )]
    pub body_template: Option<std::path::PathBuf>,
    /// HTTP: a header sent with every request, as 'NAME: VALUE' (repeat it),
    /// e.g. an API key.
    #[arg(id = "http_header", long = "http-header")]
    pub headers: Vec<String>,
    /// HTTP, generic profile: answers that count as accepted only when the
    /// JSON at POINTER is VALUE [accept_if], e.g. /status=OK (others are
    /// permanent failures, with the answer as their error).
    #[arg(
        id = "http_accept_if",
        long = "http-accept-if",
        env = "SMSMESH_HTTP_ACCEPT_IF"
    )]
    pub accept_if: Option<String>,
    /// HTTP, generic profile: status codes that mean a temporary failure
    /// (retried) [temporary_status], e.g. 400,409; by default 408, 425 and
    /// 5xx but 503.
    #[arg(
        id = "http_temporary_status",
        long = "http-temporary-status",
        env = "SMSMESH_HTTP_TEMPORARY_STATUS",
        value_delimiter = ','
    )]
    pub temporary_status: Vec<u16>,
    /// HTTP, generic profile: status codes that mean a permanent failure
    /// (never retried) [permanent_status], e.g. 500 for a provider that
    /// answers it for a bad number; by default the other 4xx.
    #[arg(
        id = "http_permanent_status",
        long = "http-permanent-status",
        env = "SMSMESH_HTTP_PERMANENT_STATUS",
        value_delimiter = ','
    )]
    pub permanent_status: Vec<u16>,
}

/// How the provider's answers are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// The JSON pointer of the provider's id in its answer.
    pub id_field: String,
    /// A 2xx answer is accepted only if the JSON at this pointer is this value.
    pub accept_if: Option<(String, String)>,
    /// Statuses that are temporary failures, whatever the default says.
    pub temporary: Vec<u16>,
    /// Statuses that are permanent failures, whatever the default says.
    pub permanent: Vec<u16>,
}

/// The provider's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// A POST of the message's fields to the URL.
    Generic {
        /// As JSON (else as a form).
        json: bool,
    },
    /// Twilio's Messages API.
    Twilio,
}

/// The HTTP gateway's settings, checked.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Where a send is POSTed (without user, password or our options).
    pub url: url::Url,
    /// The API.
    pub profile: Profile,
    /// Basic auth (user, password), from the URL.
    pub basic: Option<(String, String)>,
    /// A bearer token.
    pub bearer: Option<String>,
    /// The secret request bodies are signed with.
    pub hmac_secret: Option<Vec<u8>>,
    /// How its answers are read.
    pub answers: Answers,
    /// The generic profile's body template, if given.
    pub template: Option<super::template::Template>,
    /// Headers sent with every request.
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    /// Requests a second; 0: no limit.
    pub rate: u32,
    /// How long one request may take.
    pub timeout: Duration,
    /// The pause after a throttling answer that says not how long.
    pub throttle_pause: Duration,
    /// The default sender.
    pub sender: String,
    /// Where the provider should post delivery status.
    pub status_callback: Option<String>,
    /// Who delivers the sends: provider ids are unique within it.
    pub provider: String,
    /// Where to serve the provider's status callbacks.
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// The generic callbacks' secret.
    pub webhook_secret: Option<Vec<u8>>,
}

/// The secret in the file at `path` (given by `flag`), without surrounding whitespace.
fn read_secret(path: Option<&std::path::Path>, flag: &str) -> Result<Option<String>, String> {
    path.map(|f| {
        std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{flag} {}: {e}", f.display()))
    })
    .transpose()
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl HttpConfig {
    /// Reads `--gateway` (an `http://` or `https://` URL) and the flags.
    pub fn parse(gateway: &str, args: &HttpArgs) -> Result<HttpConfig, String> {
        let mut url =
            url::Url::parse(gateway).map_err(|e| format!("--gateway {gateway:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "--gateway {gateway:?}: an http:// or https:// URL with a host"
            ));
        }
        let mut a = args.clone();
        let mut kept = Vec::new();
        for (k, v) in url.query_pairs() {
            let v = v.into_owned();
            match &*k {
                "profile" => a.profile = v,
                "format" => a.format = v,
                "id_field" => a.id_field = v,
                "accept_if" => a.accept_if = Some(v),
                "temporary_status" | "permanent_status" => {
                    let codes = v
                        .split(',')
                        .map(|c| c.trim().parse::<u16>())
                        .collect::<Result<Vec<u16>, _>>()
                        .map_err(|_| format!("{k}={v}: status codes, e.g. 400,409"))?;
                    if k == "temporary_status" {
                        a.temporary_status = codes;
                    } else {
                        a.permanent_status = codes;
                    }
                }
                "rate" => {
                    a.rate = v
                        .parse()
                        .map_err(|_| format!("rate={v}: a whole number of requests a second"))?
                }
                "timeout" => {
                    a.timeout =
                        humantime::parse_duration(&v).map_err(|e| format!("timeout={v}: {e}"))?
                }
                "throttle_pause" => {
                    a.throttle_pause = humantime::parse_duration(&v)
                        .map_err(|e| format!("throttle_pause={v}: {e}"))?
                }
                "sender" => a.sender = v,
                "status_callback" => a.status_callback = Some(v),
                _ => kept.push((k.into_owned(), v)),
            }
        }
        let basic = (!url.username().is_empty()).then(|| {
            (
                percent_decoded(url.username()),
                percent_decoded(url.password().unwrap_or_default()),
            )
        });
        let provider = format!("http:{}", url.host_str().unwrap_or_default());
        url.set_username("").ok();
        url.set_password(None).ok();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let profile = match (a.profile.as_str(), a.format.as_str()) {
            ("generic", "json") => Profile::Generic { json: true },
            ("generic", "form") => Profile::Generic { json: false },
            ("generic", other) => return Err(format!("format {other:?}: json or form")),
            ("twilio", _) => Profile::Twilio,
            (other, _) => return Err(format!("profile {other:?}: generic or twilio")),
        };
        if profile == Profile::Twilio {
            let (sid, _) = basic
                .as_ref()
                .ok_or("the twilio profile needs the account SID and auth token: https://SID:TOKEN@api.twilio.com")?;
            // POST {base}/2010-04-01/Accounts/{SID}/Messages.json
            let path = format!(
                "{}/2010-04-01/Accounts/{sid}/Messages.json",
                url.path().trim_end_matches('/')
            );
            url.set_path(&path);
            a.id_field = "/sid".into();
        }
        let bearer = read_secret(a.bearer_file.as_deref(), "--http-bearer-file")?;
        let hmac_secret = read_secret(a.hmac_secret_file.as_deref(), "--http-hmac-secret-file")?
            .map(String::into_bytes);
        let webhook_secret = read_secret(
            a.webhook_secret_file.as_deref(),
            "--http-webhook-secret-file",
        )?
        .map(String::into_bytes);
        if a.timeout.is_zero() {
            return Err("timeout must be more than 0".into());
        }
        let template = match &a.body_template {
            Some(path) if profile != Profile::Twilio => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--http-body-template {}: {e}", path.display()))?;
                Some(
                    super::template::Template::parse(&text)
                        .map_err(|e| format!("--http-body-template {}: {e}", path.display()))?,
                )
            }
            Some(_) => return Err("--http-body-template is for the generic profile".into()),
            None => None,
        };
        let mut headers = Vec::new();
        for h in &a.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("--http-header {h:?}: give 'NAME: VALUE'"))?;
            let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("--http-header {h:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(value.trim())
                .map_err(|e| format!("--http-header {h:?}: {e}"))?;
            headers.push((name, value));
        }
        let accept_if = match &a.accept_if {
            Some(rule) => {
                let (pointer, value) = rule.split_once('=').ok_or_else(|| {
                    format!("accept_if {rule:?}: give POINTER=VALUE, e.g. /status=OK")
                })?;
                if !pointer.starts_with('/') {
                    return Err(format!(
                        "accept_if {rule:?}: a JSON pointer starts with /, e.g. /status=OK"
                    ));
                }
                Some((pointer.to_string(), value.to_string()))
            }
            None => None,
        };
        if let Some(c) = a
            .temporary_status
            .iter()
            .chain(&a.permanent_status)
            .find(|c| !(400..=599).contains(*c))
        {
            return Err(format!(
                "status {c}: only error answers (400 to 599) can be temporary or permanent"
            ));
        }
        Ok(HttpConfig {
            url,
            profile,
            basic,
            bearer,
            hmac_secret,
            answers: Answers {
                id_field: a.id_field,
                accept_if,
                temporary: a.temporary_status,
                permanent: a.permanent_status,
            },
            template,
            headers,
            rate: a.rate,
            timeout: a.timeout,
            throttle_pause: a.throttle_pause,
            sender: a.sender,
            status_callback: a.status_callback,
            provider,
            webhook_listen: a.webhook_listen,
            webhook_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> HttpArgs {
        HttpArgs {
            profile: "generic".into(),
            format: "json".into(),
            id_field: "/id".into(),
            bearer_file: None,
            hmac_secret_file: None,
            rate: 0,
            timeout: Duration::from_secs(10),
            throttle_pause: Duration::from_secs(1),
            sender: String::new(),
            status_callback: None,
            webhook_listen: None,
            webhook_secret_file: None,
            body_template: None,
            headers: Vec::new(),
            accept_if: None,
            temporary_status: Vec::new(),
            permanent_status: Vec::new(),
        }
    }

    #[test]
    fn the_url_carries_credentials_and_options_which_are_not_sent() {
        let c = HttpConfig::parse(
            "https://ACxx:tok%40en@api.twilio.com?profile=twilio&rate=50&sender=ACME",
            &args(),
        )
        .unwrap();
        assert_eq!(
            c.url.as_str(),
            "https://api.twilio.com/2010-04-01/Accounts/ACxx/Messages.json"
        );
        assert_eq!(c.basic, Some(("ACxx".into(), "tok@en".into())));
        assert_eq!(
            (
                c.profile,
                c.rate,
                c.sender.as_str(),
                c.answers.id_field.as_str()
            ),
            (Profile::Twilio, 50, "ACME", "/sid")
        );
        let g = HttpConfig::parse("http://127.0.0.1:9/send?key=abc&format=form", &args()).unwrap();
        assert_eq!(
            g.url.as_str(),
            "http://127.0.0.1:9/send?key=abc",
            "the provider's own query stays"
        );
        assert_eq!(g.profile, Profile::Generic { json: false });
        for (bad, says) in [
            ("ftp://x", "http:// or https://"),
            ("http://h?profile=nexmo", "generic or twilio"),
            ("http://h?rate=fast", "rate=fast"),
            ("https://api.twilio.com?profile=twilio", "account SID"),
            ("http://h?accept_if=status", "POINTER=VALUE"),
            ("http://h?temporary_status=4xx", "status codes"),
            ("http://h?permanent_status=200", "400 to 599"),
        ] {
            let e = HttpConfig::parse(bad, &args()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
