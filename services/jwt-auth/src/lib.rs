//! Bearer-token validation, as oauth2-proxy (`--skip-jwt-bearer-tokens`) and the gateway do it:
//! RS256 only, a key from the issuer's discovered JWKS picked by `kid` (every key tried for a
//! token without one, as go-oidc does), exact `iss`, `aud` containing the client id, and
//! `exp` / `nbf` with a small leeway.
//!
//! Keys: fetched at start (discovery document → `jwks_uri` → JWKS); an unknown `kid` triggers a
//! refetch at most once per `refetch_cooldown` (an attacker's random kids must not turn into a
//! flood of requests to the issuer); a failed fetch keeps the last good keys.
//!
//! Time comes from the `Clock` port, not from jsonwebtoken: its own `exp` check reads the OS
//! wall clock, which is wrong under simulation (simulated wall time) and forbidden by
//! our determinism rules. So jsonwebtoken checks signature, `alg`, `iss` and `aud`; we check the
//! times.
//!
//! Its own crate so that the auth proxy (`edge`) and the gateway share one validator without one
//! service depending on another. Must never depend on a service crate, the OS clock or threads.
#![forbid(unsafe_code)]

pub mod http_client;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ports::Clock;
use serde::Deserialize;
use thiserror::Error;

/// Leeway on `exp` and `nbf` by default (oauth2-proxy / go-oidc allow clock skew of this order).
pub const LEEWAY_SECS_DEFAULT: u64 = 30;
/// Shortest pause between two JWKS fetches caused by unknown `kid`s, by default.
pub const REFETCH_COOLDOWN_DEFAULT: Duration = Duration::from_secs(10);
/// Shortest pause between refetches while no key is held at all (the issuer was not up yet):
/// shorter than the normal cooldown, so a validator that started first recovers quickly.
pub const EMPTY_REFETCH_COOLDOWN: Duration = Duration::from_secs(1);
/// Longest wait for the issuer's discovery document or JWKS.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most keys kept from one JWKS.
pub const KEYS_MAX: usize = 16;
/// Longest token accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// What a token must say to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// The issuer URL, byte-identical to the tokens' `iss` (and to the discovery's `issuer`).
    pub issuer: String,
    /// The client id that `aud` must contain.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Shortest pause between refetches caused by unknown `kid`s.
    pub refetch_cooldown: Duration,
}

impl VerifierConfig {
    /// Default leeway and cooldown.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> VerifierConfig {
        VerifierConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: LEEWAY_SECS_DEFAULT,
            refetch_cooldown: REFETCH_COOLDOWN_DEFAULT,
        }
    }
}

/// The claims a valid token gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// `email`, when present.
    pub email: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not a JWT we can even read (bad base64 or JSON, `alg: none`, too long).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Any `alg` but RS256.
    #[error("algorithm {0} not accepted (RS256 only)")]
    Algorithm(String),
    /// The header has no `kid`, and no key held signed it.
    #[error("token has no kid, and no key of the issuer signed it")]
    NoKeySigned,
    /// No key with this `kid`, even after refetching the JWKS (when allowed).
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// Signature, `iss`, `aud` or a required claim is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` not reached (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
}

/// Where the keys come from.
pub trait KeySource: Send + Sync + 'static {
    /// The current JWKS.
    fn fetch(&self) -> BoxFuture<'static, Result<JwkSet, String>>;
}

/// OIDC discovery over a [`ports::Net`]: `<issuer>/.well-known/openid-configuration`, then its
/// `jwks_uri`.
pub struct DiscoveredJwks<N> {
    net: N,
    issuer_url: String,
    tls: crate::http_client::Tls,
}

impl<N: ports::Net> DiscoveredJwks<N> {
    /// Discovers from `issuer_url` (e.g. `http://127.0.0.1:9000`, or an identity provider's
    /// `https://` URL, whose certificate must chain to the public roots).
    pub fn new(net: N, issuer_url: impl Into<String>) -> DiscoveredJwks<N> {
        DiscoveredJwks {
            net,
            issuer_url: issuer_url.into(),
            tls: crate::http_client::Tls::default(),
        }
    }

    /// Trusts `tls`'s roots for `https://` instead of the public ones (a private CA).
    pub fn with_tls(mut self, tls: crate::http_client::Tls) -> DiscoveredJwks<N> {
        self.tls = tls;
        self
    }
}

impl<N: ports::Net> KeySource for DiscoveredJwks<N> {
    fn fetch(&self) -> BoxFuture<'static, Result<JwkSet, String>> {
        let net = self.net.clone();
        let issuer = self.issuer_url.clone();
        let tls = self.tls.clone();
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        Box::pin(async move {
            let document =
                crate::http_client::get_json(&net, &discovery, FETCH_TIMEOUT, &tls).await?;
            // OpenID Connect Discovery §4.3, as go-oidc (oauth2-proxy's) checks it: a document
            // that names another issuer is not this issuer's, and its keys are not trusted.
            let named = document.get("issuer").and_then(serde_json::Value::as_str);
            if named != Some(issuer.as_str()) {
                return Err(format!(
                    "{discovery} names the issuer {named:?}, not {issuer:?}; its keys are not used"
                ));
            }
            let jwks_uri = document
                .get("jwks_uri")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("{discovery} has no jwks_uri"))?;
            let jwks = crate::http_client::get_json(&net, jwks_uri, FETCH_TIMEOUT, &tls).await?;
            serde_json::from_value(jwks).map_err(|e| format!("{jwks_uri}: not a JWKS: {e}"))
        })
    }
}

/// Fixed keys (tests, and a gateway configured with a JWKS file).
pub struct StaticJwks(pub JwkSet);

impl KeySource for StaticJwks {
    fn fetch(&self) -> BoxFuture<'static, Result<JwkSet, String>> {
        let set = self.0.clone();
        Box::pin(async move { Ok(set) })
    }
}

/// Validates bearer tokens; shared by every request of a service.
pub struct Verifier {
    config: VerifierConfig,
    clock: Arc<dyn Clock>,
    source: Arc<dyn KeySource>,
    keys: Mutex<Keys>,
    /// When the last fetch started; also makes fetches single-flight.
    fetched_at: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .field("kids", &self.kids())
            .finish()
    }
}

impl Verifier {
    /// No keys yet: call [`Verifier::refresh`] at start (an unknown `kid` also fetches).
    pub fn new(
        config: VerifierConfig,
        clock: Arc<dyn Clock>,
        source: Arc<dyn KeySource>,
    ) -> Verifier {
        Verifier {
            config,
            clock,
            source,
            keys: Mutex::new(Keys::default()),
            fetched_at: tokio::sync::Mutex::new(None),
        }
    }

    /// What this verifier accepts.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// The `kid`s currently trusted.
    pub fn kids(&self) -> Vec<String> {
        self.keys
            .lock()
            .expect("keys poisoned")
            .0
            .iter()
            .filter_map(|(kid, _)| kid.clone())
            .collect()
    }

    /// Fetches the JWKS now; on failure the keys held stay. Returns how many keys are held.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut fetched_at = self.fetched_at.lock().await;
        *fetched_at = Some(tokio::time::Instant::now()); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, String> {
        let set = match self.source.fetch().await {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS fetch failed; keeping the last good keys");
                return Err(e);
            }
        };
        let keys = usable_keys(&set);
        if keys.is_empty() {
            tracing::warn!("JWKS has no usable RS256 key; keeping the last good keys");
            return Err("JWKS has no usable RS256 key".into());
        }
        let count = keys.len();
        *self.keys.lock().expect("keys poisoned") = keys;
        tracing::debug!(count, "JWKS loaded");
        Ok(count)
    }

    /// Refetches unless one happened within the cooldown (then the caller waits for a running
    /// fetch, if any, and uses whatever it got).
    async fn refetch_for_unknown_kid(&self) {
        let mut fetched_at = self.fetched_at.lock().await;
        let now = tokio::time::Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        let cooldown = if self.keys.lock().expect("keys poisoned").is_empty() {
            self.config.refetch_cooldown.min(EMPTY_REFETCH_COOLDOWN)
        } else {
            self.config.refetch_cooldown
        };
        if let Some(at) = *fetched_at
            && now.duration_since(at) < cooldown
        {
            return;
        }
        *fetched_at = Some(now);
        let _ = self.fetch_locked().await;
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.lock().expect("keys poisoned");
        (keys.0.iter())
            .find(|(named, _)| named.as_deref() == Some(kid))
            .map(|(_, key)| key.clone())
    }

    /// Every key held, named or not.
    fn all_keys(&self) -> Vec<DecodingKey> {
        let keys = self.keys.lock().expect("keys poisoned");
        keys.0.iter().map(|(_, key)| key.clone()).collect()
    }

    /// The claims of `token` if `key` signed it. `Err(None)`: another key signed it (or none
    /// of these); `Err(Some(_))`: the signature is good, the claims are not.
    fn decode_with(
        &self,
        token: &str,
        key: &DecodingKey,
    ) -> Result<TokenClaims, Option<TokenError>> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["iss", "aud", "sub", "exp"]);
        // Times are ours to check, on the Clock port (see the module doc).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        match jsonwebtoken::decode::<TokenClaims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature => Err(None),
            Err(e) => Err(Some(TokenError::Invalid(e.to_string()))),
        }
    }

    /// A token without `kid` is checked against every key held, as go-oidc (oauth2-proxy's
    /// validator) does for an issuer with one key and no kids; at most [`KEYS_MAX`] checks,
    /// and one refetch (rate-limited as for an unknown kid) when none signed it.
    async fn decode_without_kid(&self, token: &str) -> Result<TokenClaims, TokenError> {
        for attempt in 0..2 {
            for key in self.all_keys() {
                match self.decode_with(token, &key) {
                    Ok(claims) => return Ok(claims),
                    Err(Some(refused)) => return Err(refused),
                    Err(None) => {}
                }
            }
            if attempt == 0 {
                self.refetch_for_unknown_kid().await;
            }
        }
        Err(TokenError::NoKeySigned)
    }

    /// Validates `token` (without the `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Malformed("token too long".into()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let claims = match header.kid {
            Some(kid) => {
                let key = match self.key(&kid) {
                    Some(key) => key,
                    None => {
                        self.refetch_for_unknown_kid().await;
                        self.key(&kid)
                            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?
                    }
                };
                self.decode_with(token, &key).map_err(|refused| {
                    refused.unwrap_or_else(|| TokenError::Invalid("InvalidSignature".into()))
                })?
            }
            None => self.decode_without_kid(token).await?,
        };
        let now_secs = self.clock.now_unix_ms().div_euclid(1000);
        let leeway = i64::try_from(self.config.leeway_secs).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(leeway) < now_secs {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && nbf.saturating_sub(leeway) > now_secs
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.is_empty() {
            return Err(TokenError::Invalid("empty sub".into()));
        }
        Ok(Claims {
            sub: claims.sub,
            email: claims.email,
            exp: claims.exp,
        })
    }

    /// Seconds until `claims` expire (with the leeway), by the Clock port; 0 if past.
    pub fn remaining(&self, claims: &Claims) -> Duration {
        let now_ms = self.clock.now_unix_ms();
        let leeway_ms = i64::try_from(self.config.leeway_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        let end_ms = claims.exp.saturating_mul(1000).saturating_add(leeway_ms);
        Duration::from_millis(u64::try_from(end_ms.saturating_sub(now_ms)).unwrap_or(0))
    }
}

#[derive(Deserialize)]
struct TokenClaims {
    sub: String,
    exp: i64,
    nbf: Option<i64>,
    email: Option<String>,
}

/// The RS256 signing keys of a JWKS, with their `kid`s (a key without one is kept, for tokens
/// without one: see `Verifier::decode_without_kid`); anything else (other types, other algs,
/// encryption keys) is left out. At most [`KEYS_MAX`].
#[derive(Default)]
struct Keys(Vec<(Option<String>, DecodingKey)>);

impl Keys {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

fn usable_keys(set: &JwkSet) -> Keys {
    Keys(
        set.keys
            .iter()
            .filter(|jwk| is_rs256_signing(jwk))
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone(), key))
            })
            .take(KEYS_MAX)
            .collect(),
    )
}

fn is_rs256_signing(jwk: &Jwk) -> bool {
    use jsonwebtoken::jwk::{AlgorithmParameters, KeyAlgorithm, PublicKeyUse};
    let rsa = matches!(jwk.algorithm, AlgorithmParameters::RSA(_));
    let alg_ok = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256));
    let use_ok = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    rsa && alg_ok && use_ok
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// oauth2-proxy's test for a JWT bearer: `^ey[a-zA-Z0-9_-]*\.ey[a-zA-Z0-9_-]*\.[a-zA-Z0-9_-]+$`.
/// Anything else is "no token" to it (401), not a bad token (403). Note that an unsigned
/// `alg: none` token (empty third part) is therefore "no token".
pub fn looks_like_jwt(token: &str) -> bool {
    let part = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => {
            h.starts_with("ey")
                && c.starts_with("ey")
                && !s.is_empty()
                && part(h)
                && part(c)
                && part(s)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn jwt_shape_is_oauth2_proxys() {
        assert!(looks_like_jwt("eyJh.eyJz.abc-_"));
        assert!(!looks_like_jwt("eyJh.eyJz."), "alg none has no signature");
        assert!(!looks_like_jwt("abc.eyJz.sig"));
        assert!(!looks_like_jwt("eyJh.eyJz.s.x"));
        assert!(!looks_like_jwt("eyJh.eyJz.s+g"));
    }
}
