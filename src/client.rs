//! How smsmesh programs reach the coordinator: the endpoint (plaintext for
//! `http://`, TLS for `https://`, optionally with a client certificate), and
//! the credentials they attach to calls.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Metadata key of the join token a node presents to the coordinator.
pub const JOIN_TOKEN_METADATA: &str = "x-smsmesh-join-token";

/// Reads a file, naming `what` and the path in the error.
pub fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// TLS material of a client, PEM encoded.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA that the coordinator's certificate must chain to.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name expected in the coordinator's certificate, when it is not the URL's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Reads `--tls-ca`, `--tls-cert` / `--tls-key` files. None if none is given.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        domain: Option<String>,
    ) -> Result<Option<ClientTls>, String> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((
                read_file(c, "client certificate")?,
                read_file(k, "client key")?,
            )),
            (None, None) => None,
            _ => return Err("give both --tls-cert and --tls-key, or neither".into()),
        };
        let ca_pem = ca.map(|p| read_file(p, "CA certificate")).transpose()?;
        if ca_pem.is_none() && identity.is_none() && domain.is_none() {
            return Ok(None);
        }
        Ok(Some(ClientTls {
            ca_pem,
            identity,
            domain,
        }))
    }
}

/// `e` and every error beneath it, joined by ": " (tonic's transport errors
/// say only "transport error" on their own).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        next = cause.source();
    }
    text
}

/// How a standby coordinator's UNAVAILABLE answers begin: another
/// coordinator leads (or soon will), so a caller tries its next address soon
/// rather than backing off as from a coordinator that is down.
pub const STANDBY: &str = "this coordinator is a standby";

/// Whether the coordinator on `channel` serves the API: its gRPC health for
/// `smsmesh.v1.Coordinator` says SERVING (a standby's does not). Asks for at
/// most `within`.
pub async fn leads(channel: tonic::transport::Channel, within: Duration) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: crate::pb::coordinator_server::SERVICE_NAME.into(),
    };
    matches!(
        tokio::time::timeout(within, health.check(request)).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// Whether `status` is a standby coordinator's refusal.
pub fn is_standby(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().starts_with(STANDBY)
}

/// The coordinator addresses in `urls`: one, or several separated by commas
/// (a leader and its standbys; callers try them in turn).
pub fn addresses(urls: &str) -> Vec<&str> {
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.is_empty() { vec![urls] } else { list }
}

/// The endpoint of `url`: TLS when it is `https://` (checked against the CA
/// of `tls`), plaintext for `http://`. A bare `host:port`, as grpcurl takes
/// it, is `https://` when `tls` is given and `http://` otherwise.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, String> {
    let full;
    let url = if url.contains("://") {
        url
    } else {
        full = format!("{}://{url}", if tls.is_some() { "https" } else { "http" });
        &full
    };
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad coordinator URL {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let https = url.starts_with("https://");
    match (https, tls) {
        (false, None) => Ok(ep),
        (false, Some(_)) => Err(format!(
            "TLS files are given but the coordinator URL {url:?} is http://: use https://"
        )),
        (true, None) => Err(format!(
            "{url:?} is https://: give the CA to trust with --tls-ca FILE"
        )),
        (true, Some(t)) => {
            let ca = t.ca_pem.as_ref().ok_or_else(|| {
                format!("{url:?} is https://: give the CA to trust with --tls-ca FILE")
            })?;
            let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &t.identity {
                cfg = cfg.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &t.domain {
                cfg = cfg.domain_name(d.clone());
            }
            ep.tls_config(cfg)
                .map_err(|e| format!("bad TLS configuration: {e}"))
        }
    }
}

/// A node join token as metadata (`JOIN_TOKEN_METADATA`), if it is one.
pub fn join_token_value(token: &str) -> Result<tonic::metadata::AsciiMetadataValue, String> {
    token
        .parse()
        .map_err(|_| "the join token has characters not allowed in metadata".to_string())
}

/// Adds a node join token to a request.
pub fn join_token<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), String> {
    let value = join_token_value(token)?;
    request.metadata_mut().insert(JOIN_TOKEN_METADATA, value);
    Ok(())
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn bearer<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), String> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token has characters not allowed in metadata".to_string())?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}
