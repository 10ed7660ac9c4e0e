//! Status callbacks to clients: a batch (or its tenant) names a URL, and the
//! coordinator POSTs JSON events there as the batch's messages reach their
//! outcomes and delivery states, and when the batch ends.
//!
//! The core makes the events in the same group commit as the outcomes they
//! report ([`crate::core`]'s `callbacks` module), in rows of one URL each,
//! stored until they are delivered ([`crate::store`], table `callbacks`).
//! The [`sender`] takes each row once it is stored, POSTs rows of a URL
//! together, signed ([`wire`]), and retries with backoff for at most
//! [`CallbackConfig::max_age`]; a delivered (or given up) row is removed in a
//! later group commit. The sender runs on its own task and never waits for
//! the core: a slow or dead receiver fills the store, not the dispatch path.
//! After a restart the rows still stored are sent again, so a receiver may
//! see an event twice; its `id` tells.

pub mod flags;
pub mod sender;
pub mod wire;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use smsmesh::Error;

use crate::auth::Tenant;

/// The name under which a setting holds for every tenant without one of its own.
pub const ANY_TENANT: &str = "*";

/// How callbacks are configured. [`Default`]: none configured.
#[derive(Clone)]
pub struct CallbackConfig {
    /// Signing secret per tenant (`*`: any tenant without one of its own).
    pub secrets: HashMap<String, Arc<[u8]>>,
    /// The callback URL of a tenant's batches that name none (`*`: any tenant).
    pub default_urls: HashMap<String, Arc<str>>,
    /// A URL gets at most one request this often, unless a full one is ready.
    pub interval: Duration,
    /// Most events in one request.
    pub max_events: usize,
    /// An event not delivered this long after it was made is given up (and counted).
    pub max_age: Duration,
    /// How long one request may take.
    pub timeout: Duration,
    /// Requests in flight at once per URL.
    pub concurrency: usize,
    /// Most events the sender keeps in memory; the rest wait in the store.
    pub max_buffered_events: usize,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            secrets: HashMap::new(),
            default_urls: HashMap::new(),
            interval: Duration::from_millis(100),
            max_events: 1000,
            max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 4,
            max_buffered_events: 200_000,
        }
    }
}

impl std::fmt::Debug for CallbackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tenants: Vec<&String> = self.secrets.keys().collect();
        tenants.sort();
        f.debug_struct("CallbackConfig")
            .field("secrets_of", &tenants)
            .field("default_urls", &self.default_urls)
            .field("interval", &self.interval)
            .field("max_events", &self.max_events)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl CallbackConfig {
    /// The signing secret of `tenant`'s events.
    pub fn secret(&self, tenant: &str) -> Option<&Arc<[u8]>> {
        self.secrets
            .get(tenant)
            .or_else(|| self.secrets.get(ANY_TENANT))
    }

    /// The callback URL of a batch of `tenant` that asked for `asked` (empty:
    /// none), checked: `None` when it has none. A URL without a secret to
    /// sign its events with is refused.
    pub fn resolve(
        &self,
        tenant: &Tenant,
        asked: Option<Arc<str>>,
    ) -> Result<Option<Arc<str>>, Error> {
        let url = asked.or_else(|| {
            self.default_urls
                .get(tenant.as_str())
                .or_else(|| self.default_urls.get(ANY_TENANT))
                .cloned()
        });
        let Some(url) = url else { return Ok(None) };
        if self.secret(tenant.as_str()).is_none() {
            let who = if tenant.as_str().is_empty() {
                "the default tenant".to_string()
            } else {
                format!("tenant {tenant}")
            };
            return Err(Error::FailedPrecondition(format!(
                "callback_url: {who} has no callback signing secret; the coordinator must be started with one for it (smscoord --callback-secrets FILE, a line `{}=SECRET`)",
                if tenant.as_str().is_empty() {
                    ANY_TENANT
                } else {
                    tenant.as_str()
                }
            )));
        }
        Ok(Some(url))
    }
}

/// Longest callback URL accepted, in bytes.
const MAX_URL: usize = 2048;

/// A callback URL as a request gives it (`field` names it in errors): empty
/// for none, else an absolute http or https URL with a host.
pub fn parse_url(field: &str, url: &str) -> Result<Option<Arc<str>>, Error> {
    if url.is_empty() {
        return Ok(None);
    }
    if url.len() > MAX_URL {
        return Err(Error::invalid(format!(
            "{field} is {} bytes long; at most {MAX_URL} are allowed",
            url.len()
        )));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid(format!("{field} {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::invalid(format!(
            "{field} {url:?}: give an http:// or https:// URL with a host"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid(format!(
            "{field}: put no credentials in the URL; events are signed with the tenant's secret instead"
        )));
    }
    Ok(Some(url.into()))
}

/// Reads a secrets file: a line `TENANT=SECRET` per tenant (`*=SECRET` for
/// every tenant without one, the default tenant included); blank lines and
/// lines starting with `#` are skipped.
pub fn read_secrets(path: &Path) -> Result<HashMap<String, Arc<[u8]>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--callback-secrets {}: {e}", path.display()))?;
    let mut secrets = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((tenant, secret)) = line.split_once('=') else {
            return Err(format!(
                "--callback-secrets {} line {}: expected TENANT=SECRET (or *=SECRET)",
                path.display(),
                n + 1
            ));
        };
        let (tenant, secret) = (tenant.trim(), secret.trim());
        if tenant.is_empty() || secret.len() < 16 {
            return Err(format!(
                "--callback-secrets {} line {}: give a tenant name (or *) and a secret of at least 16 bytes",
                path.display(),
                n + 1
            ));
        }
        if secrets
            .insert(tenant.to_string(), Arc::from(secret.as_bytes()))
            .is_some()
        {
            return Err(format!(
                "--callback-secrets {} line {}: tenant {tenant} is given twice",
                path.display(),
                n + 1
            ));
        }
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert_eq!(parse_url("u", "").unwrap(), None);
        assert!(parse_url("u", "http://127.0.0.1:9/x").unwrap().is_some());
        for bad in ["ftp://h/x", "not a url", "http://u:p@h/", "/relative"] {
            let e = parse_url("callback_url", bad).unwrap_err().to_string();
            assert!(e.contains("callback_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_url_needs_a_secret() {
        let mut c = CallbackConfig::default();
        let t = Tenant::new("acme");
        assert_eq!(c.resolve(&t, None).unwrap(), None);
        let e = c.resolve(&t, Some("http://h/".into())).unwrap_err();
        assert!(e.to_string().contains("acme"), "{e}");
        c.secrets
            .insert("*".into(), Arc::from(&b"0123456789abcdef"[..]));
        c.default_urls.insert("acme".into(), "http://d/".into());
        assert_eq!(c.resolve(&t, None).unwrap().as_deref(), Some("http://d/"));
        assert_eq!(
            c.resolve(&t, Some("http://h/".into())).unwrap().as_deref(),
            Some("http://h/")
        );
        assert_eq!(c.resolve(&Tenant::new("other"), None).unwrap(), None);
    }

    #[test]
    fn secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(
            &p,
            "# comment\n\nacme = 0123456789abcdefXYZ\n*=fedcba9876543210\n",
        )
        .unwrap();
        let s = read_secrets(&p).unwrap();
        assert_eq!(&*s["acme"], b"0123456789abcdefXYZ");
        assert_eq!(&*s["*"], b"fedcba9876543210");
        std::fs::write(&p, "acme=short\n").unwrap();
        assert!(read_secrets(&p).unwrap_err().contains("line 1"));
        std::fs::write(&p, "no equals sign here\n").unwrap();
        assert!(read_secrets(&p).is_err());
    }
}
