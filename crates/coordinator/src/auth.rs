//! Who may call: client authentication (JWT bearer tokens carrying a
//! tenant), node join tokens, and per-tenant admission limits.
//!
//! Every client RPC of `smsmesh.v1.Coordinator` passes [`ClientAuth::check`]
//! (installed as a tonic interceptor), which puts the caller's [`Tenant`] in
//! the request's extensions. Health and reflection are other services and
//! stay open. A tenant sees and cancels only its own batches; another
//! tenant's batch is NOT_FOUND, exactly like one that does not exist.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tonic::Status;

/// The tenant a request acts for. The empty tenant is the one every caller
/// is when authentication is off (and owns batches stored before tenants).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tenant(pub Arc<str>);

impl Tenant {
    /// The tenant named `name`.
    pub fn new(name: &str) -> Self {
        Tenant(name.into())
    }

    /// Its name ("" for the default tenant).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant of a request (the default one if none was attached).
    pub fn of<T>(request: &tonic::Request<T>) -> Tenant {
        request
            .extensions()
            .get::<Tenant>()
            .cloned()
            .unwrap_or_default()
    }
}

/// What a caller may do beyond submitting and following its own tenant's
/// batches: from the token's `scope` claim (space-separated, as OAuth 2
/// writes it, or an array of strings). Everything, without authentication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `smsmesh:emergency`: may submit EMERGENCY batches.
    pub emergency: bool,
    /// `smsmesh:operator`: may pause and resume classes of traffic.
    pub operator: bool,
}

/// The scope that allows EMERGENCY batches.
pub const EMERGENCY_SCOPE: &str = "smsmesh:emergency";
/// The scope that allows operator calls (SetClassPaused).
pub const OPERATOR_SCOPE: &str = "smsmesh:operator";

impl Grants {
    /// What a caller without authentication may do: everything.
    pub const ALL: Grants = Grants {
        emergency: true,
        operator: true,
    };

    /// The grants of a request (none if none were attached).
    pub fn of<T>(request: &tonic::Request<T>) -> Grants {
        request
            .extensions()
            .get::<Grants>()
            .copied()
            .unwrap_or_default()
    }

    /// The grants a `scope` claim's value gives.
    fn from_scope(scope: Option<&serde_json::Value>) -> Grants {
        let mut g = Grants::default();
        let mut grant = |s: &str| match s {
            EMERGENCY_SCOPE => g.emergency = true,
            OPERATOR_SCOPE => g.operator = true,
            _ => {}
        };
        match scope {
            Some(serde_json::Value::String(s)) => s.split_whitespace().for_each(&mut grant),
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|v| v.as_str()).for_each(&mut grant);
            }
            _ => {}
        }
        g
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("(default)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// How client RPCs are authenticated.
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// No authentication: every caller is the default tenant. Only when
    /// asked for explicitly (`--insecure-no-auth`).
    #[default]
    Insecure,
    /// JWT bearer tokens.
    Jwt(Arc<JwtVerifier>),
}

impl ClientAuth {
    /// Checks a request's `authorization` metadata and attaches its [`Tenant`].
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let (tenant, grants) = match self {
            ClientAuth::Insecure => (Tenant::default(), Grants::ALL),
            ClientAuth::Jwt(v) => {
                let header = request
                    .metadata()
                    .get("authorization")
                    .ok_or_else(|| {
                        Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
                    })?
                    .to_str()
                    .map_err(|_| Status::unauthenticated("authorization metadata is not text"))?;
                let token = header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated("authorization metadata must be `Bearer <token>`")
                    })?;
                v.verify_caller(token.trim())?
            }
        };
        request.extensions_mut().insert(tenant);
        request.extensions_mut().insert(grants);
        Ok(request)
    }
}

/// Checks JWTs: signature (HS256 with a shared secret, or RS256 / ES256 with
/// a public key), expiry, audience, optionally issuer; reads the tenant claim.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    tenant_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .field("tenant_claim", &self.tenant_claim)
            .finish_non_exhaustive()
    }
}

/// Longest tenant name accepted, in bytes.
pub const MAX_TENANT_LEN: usize = 128;

impl JwtVerifier {
    /// A verifier of HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8], audience: &str) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!(
                "the HS256 secret is {} bytes; use at least 32 random bytes",
                secret.len()
            ));
        }
        Ok(Self::with_key(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            audience,
        ))
    }

    /// A verifier of RS256 or ES256 tokens, given the signer's public key (PEM).
    pub fn public_key(pem: &[u8], algorithm: Algorithm, audience: &str) -> Result<Self, String> {
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
            other => {
                return Err(format!(
                    "unsupported JWT algorithm {other:?} (RS256 or ES256)"
                ));
            }
        }
        .map_err(|e| format!("not a {algorithm:?} public key in PEM form: {e}"))?;
        Ok(Self::with_key(key, algorithm, audience))
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm, audience: &str) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = 30;
        validation.validate_nbf = true;
        JwtVerifier {
            key,
            validation,
            tenant_claim: "tenant".into(),
        }
    }

    /// Also require this issuer (`iss`).
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Read the tenant from this claim instead of `tenant`.
    pub fn with_tenant_claim(mut self, claim: &str) -> Self {
        self.tenant_claim = claim.to_string();
        self
    }

    /// The tenant a valid token names; UNAUTHENTICATED saying why otherwise.
    #[allow(clippy::result_large_err)]
    pub fn verify(&self, token: &str) -> Result<Tenant, Status> {
        self.verify_caller(token).map(|(tenant, _)| tenant)
    }

    /// The tenant a valid token names and what its scopes grant.
    #[allow(clippy::result_large_err)]
    pub fn verify_caller(&self, token: &str) -> Result<(Tenant, Grants), Status> {
        use jsonwebtoken::errors::ErrorKind;
        // A critical header extension must be understood, and this verifier knows none.
        if let Ok(h) = jsonwebtoken::decode_header(token)
            && let Some(crit) = h.crit.filter(|c| !c.is_empty())
        {
            return Err(Status::unauthenticated(format!(
                "the token's header marks extensions as critical ({}), which this coordinator does not understand",
                smsmesh::echo(&crit.join(", "))
            )));
        }
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| {
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::ImmatureSignature => {
                    "the token is not valid yet (its `nbf` is in the future)".to_string()
                }
                ErrorKind::InvalidAudience => "the token is for another audience".to_string(),
                ErrorKind::InvalidIssuer => "the token is from another issuer".to_string(),
                ErrorKind::InvalidSignature => "the token's signature is not valid".to_string(),
                ErrorKind::InvalidAlgorithm => {
                    "the token is signed with an algorithm this coordinator does not accept"
                        .to_string()
                }
                ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                _ => format!("the token is not valid: {e}"),
            };
            Status::unauthenticated(why)
        })?;
        let tenant = data
            .claims
            .get(&self.tenant_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "the token has no `{}` claim (a string naming the tenant)",
                    self.tenant_claim
                ))
            })?;
        if tenant.is_empty()
            || tenant.len() > MAX_TENANT_LEN
            || tenant.chars().any(|c| c.is_control())
        {
            return Err(Status::unauthenticated(format!(
                "the token's `{}` claim must be 1 to {MAX_TENANT_LEN} bytes without control characters",
                self.tenant_claim
            )));
        }
        let grants = Grants::from_scope(data.claims.get("scope"));
        Ok((Tenant::new(tenant), grants))
    }
}

/// Mints an HS256 token for `tenant`, valid for `ttl`, with `scope` (space
/// separated; empty: none) (development and tests).
pub fn mint_hs256(
    secret: &[u8],
    audience: &str,
    issuer: Option<&str>,
    tenant: &str,
    scope: &str,
    ttl: Duration,
) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": tenant,
        "tenant": tenant,
        "aud": audience,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if let Some(iss) = issuer {
        claims["iss"] = iss.into();
    }
    if !scope.trim().is_empty() {
        claims["scope"] = scope.trim().into();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| format!("cannot sign the token: {e}"))
}

/// Compares a presented secret with the expected one in time that does not
/// depend on where they differ.
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(presented.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

/// Per-tenant admission limits, checked at submission.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TenantLimits {
    /// Messages per second a tenant may submit, sustained (a token bucket). None: no limit.
    pub rate: Option<f64>,
    /// Messages a tenant may submit at once (the bucket's size).
    pub burst: u64,
    /// Most messages of a tenant not finished yet (pending or in flight). None: no cap.
    pub max_pending: Option<u64>,
}

/// A token bucket of messages.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes `n` tokens, or says how long until there are `n` (None if never:
    /// `n` is more than the bucket holds).
    pub fn take(&mut self, n: u64, now: Instant) -> Result<(), Option<Duration>> {
        self.refill(now);
        let n = n as f64;
        if n > self.burst {
            return Err(None);
        }
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        Err(Some(Duration::from_secs_f64((n - self.tokens) / self.rate)))
    }

    /// Gives back `n` tokens taken for a request that was not accepted after all.
    pub fn refund(&mut self, n: u64) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_names_its_tenant() {
        let v = JwtVerifier::hs256(SECRET, "smsmesh").unwrap();
        let t = mint_hs256(SECRET, "smsmesh", None, "acme", "", Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&t).unwrap(), Tenant::new("acme"));
        assert_eq!(v.verify_caller(&t).unwrap().1, Grants::default());
    }

    #[test]
    fn scopes_grant_emergency_and_operator_calls() {
        let v = JwtVerifier::hs256(SECRET, "smsmesh").unwrap();
        let minted = |scope: &str| {
            let t = mint_hs256(SECRET, "smsmesh", None, "a", scope, Duration::from_secs(60));
            v.verify_caller(&t.unwrap()).unwrap().1
        };
        assert_eq!(
            minted("openid smsmesh:emergency"),
            Grants {
                emergency: true,
                operator: false
            }
        );
        assert_eq!(minted("smsmesh:operator smsmesh:emergency"), Grants::ALL);
        assert_eq!(minted("smsmesh:emergencyx"), Grants::default());
        // As an array of strings, as some identity providers write `scope`.
        let g = Grants::from_scope(Some(&serde_json::json!(["smsmesh:operator", 7])));
        assert!(g.operator && !g.emergency);
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let v = JwtVerifier::hs256(SECRET, "smsmesh")
            .unwrap()
            .with_issuer("idp");
        let other = b"another secret of thirty-two bytes!";
        let cases = [
            (
                mint_hs256(
                    other,
                    "smsmesh",
                    Some("idp"),
                    "a",
                    "",
                    Duration::from_secs(60),
                ),
                "signature",
            ),
            (
                mint_hs256(
                    SECRET,
                    "other",
                    Some("idp"),
                    "a",
                    "",
                    Duration::from_secs(60),
                ),
                "audience",
            ),
            (
                mint_hs256(
                    SECRET,
                    "smsmesh",
                    Some("x"),
                    "a",
                    "",
                    Duration::from_secs(60),
                ),
                "issuer",
            ),
            (Ok("not.a.jwt".to_string()), "not valid"),
        ];
        for (token, why) in cases {
            let e = v.verify(&token.unwrap()).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(e.message().contains(why), "{why}: {}", e.message());
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtVerifier::hs256(b"short", "a").is_err());
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn the_bucket_refills_at_its_rate_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 1000, t0);
        assert!(b.take(1000, t0).is_ok());
        let wait = b.take(50, t0).unwrap_err().unwrap();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(b.take(50, t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(b.take(1001, t0), Err(None), "more than the burst: never");
        b.refund(10_000);
        assert!(
            b.take(1000, t0 + Duration::from_millis(500)).is_ok(),
            "refund caps at burst"
        );
    }
}
