//! Why a TLS connection to the coordinator fails. When a handshake fails,
//! tonic only says "transport error" (or "operation was canceled", when the
//! coordinator refuses the client's certificate after a TLS 1.3 handshake).
//! [`tls_refusal`] makes one connection of its own with the same settings
//! and names the cause, if it is one that retrying will not fix.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::ClientTls;

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client
/// says first, so that a server which refuses our certificate says so.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// How long each step of the probe may take.
const STEP: Duration = Duration::from_secs(5);

/// Connects to the `https://` coordinator at `url` with `tls` and returns why
/// TLS refuses the connection: its certificate is not trusted, or it refused
/// ours. `None` when TLS works, or fails for a reason that may pass (nothing
/// listening, a timeout).
pub async fn tls_refusal(url: &str, tls: &ClientTls) -> Option<String> {
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let config = match client_config(tls) {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    let name = tls.domain.as_deref().unwrap_or(host).to_string();
    let server_name = ServerName::try_from(name.clone()).ok()?;
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect((host, port)))
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut stream = match tokio::time::timeout(STEP, connector.connect(server_name, tcp)).await {
        Err(_) => return None,
        Ok(Err(e)) => return refusal(&e, &name),
        Ok(Ok(s)) => s,
    };
    // TLS 1.3: the server checks our certificate after the handshake, and
    // says so with an alert on the first read.
    stream.write_all(H2_PREFACE).await.ok()?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(STEP, stream.read(&mut buf)).await {
        Ok(Err(e)) => refusal(&e, &name),
        _ => None,
    }
}

/// The cause named, when `e` is a certificate the other side does not accept.
fn refusal(e: &std::io::Error, name: &str) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(why) => Some(format!(
            "TLS: the coordinator's certificate is not accepted for {name:?}: {why:?} (check --tls-ca, and --tls-domain if the certificate is for another name)"
        )),
        rustls::Error::AlertReceived(alert) => Some(format!(
            "TLS: the coordinator refused this node's certificate (alert {alert:?}): --tls-cert must be issued by the CA the coordinator trusts (its --tls-client-ca)"
        )),
        _ => None,
    }
}

/// A rustls client configuration like the one tonic builds from `tls`.
fn client_config(tls: &ClientTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_deref().unwrap_or_default()) {
        let cert = cert.map_err(|e| format!("--tls-ca: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--tls-ca: a certificate is not usable: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &tls.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--tls-cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("--tls-key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--tls-cert / --tls-key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
