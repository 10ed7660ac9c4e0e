//! The `smscoord` flags of status callbacks, made into a [`CallbackConfig`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{CallbackConfig, parse_url, read_secrets};

/// Status callbacks to clients (README, "Status callbacks").
#[derive(clap::Args, Debug, Clone)]
pub struct CallbackFlags {
    /// File of callback signing secrets, a line TENANT=SECRET each (*=SECRET:
    /// every tenant without its own, the default tenant too). A batch may
    /// have a callback URL only if its tenant has a secret.
    #[arg(long, env = "SMSMESH_CALLBACK_SECRETS")]
    pub callback_secrets: Option<PathBuf>,
    /// The callback URL of a tenant's batches that give none, as TENANT=URL
    /// (*=URL: every tenant); repeat it for several tenants.
    #[arg(long, env = "SMSMESH_TENANT_CALLBACK_URLS", value_delimiter = ' ', value_parser = tenant_url)]
    pub tenant_callback_url: Vec<(String, Arc<str>)>,
    /// A callback URL gets at most one request this often, unless
    /// --callback-max-events events are waiting for it.
    #[arg(long, env = "SMSMESH_CALLBACK_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub callback_interval: Duration,
    /// Most events in one callback request.
    #[arg(long, env = "SMSMESH_CALLBACK_MAX_EVENTS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub callback_max_events: u32,
    /// Events not delivered this long after they happened are given up
    /// (counted in smsmesh_callback_events{result="given_up"}).
    #[arg(long, env = "SMSMESH_CALLBACK_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub callback_max_age: Duration,
    /// How long a callback request may take before it counts as failed.
    #[arg(long, env = "SMSMESH_CALLBACK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub callback_timeout: Duration,
    /// Callback requests in flight at once per URL (one while it fails).
    #[arg(long, env = "SMSMESH_CALLBACK_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub callback_concurrency: u32,
}

fn tenant_url(s: &str) -> Result<(String, Arc<str>), String> {
    let (tenant, url) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: give TENANT=URL, e.g. acme=https://acme.example/sms-events")
    })?;
    let tenant = tenant.trim();
    if tenant.is_empty() {
        return Err(format!("{s:?}: give a tenant name (or *) before the ="));
    }
    match parse_url("--tenant-callback-url", url.trim()) {
        Ok(Some(url)) => Ok((tenant.to_string(), url)),
        Ok(None) => Err(format!("{s:?}: give a URL after the =")),
        Err(e) => Err(e.to_string()),
    }
}

impl CallbackFlags {
    /// The configuration these flags give (reads the secrets file).
    pub fn config(&self) -> Result<CallbackConfig, String> {
        let secrets = match &self.callback_secrets {
            Some(path) => read_secrets(path)?,
            None => Default::default(),
        };
        for (tenant, _) in &self.tenant_callback_url {
            if !secrets.contains_key(tenant) && !secrets.contains_key(super::ANY_TENANT) {
                return Err(format!(
                    "--tenant-callback-url {tenant}=...: tenant {tenant} has no secret in --callback-secrets to sign its events with"
                ));
            }
        }
        Ok(CallbackConfig {
            secrets,
            default_urls: self.tenant_callback_url.iter().cloned().collect(),
            interval: self.callback_interval,
            max_events: self.callback_max_events as usize,
            max_age: self.callback_max_age,
            timeout: self.callback_timeout,
            concurrency: self.callback_concurrency as usize,
            ..CallbackConfig::default()
        })
    }
}
