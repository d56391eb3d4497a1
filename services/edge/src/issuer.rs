//! A development OIDC issuer: just enough of an identity provider for oauth2-proxy (or our
//! stand-in) and the gateway to validate tokens the way they would against a real one.
//!
//! Serves `/.well-known/openid-configuration`, the JWKS at `/.well-known/jwks.json`, and mints
//! tokens at `POST /token` (`{"sub": "alice", "email"?: "...", "ttl_secs"?: 3600}`; no client
//! authentication: development only); `POST /keys/rotate` adds a signing key. Keys are RS256, 2048 bits; several can be published at
//! once (rotation: [`Issuer::rotate`] adds a key that signs from then on, [`Issuer::retire`]
//! stops publishing an old one).
//!
//! Keys come from a ChaCha20 stream seeded by [`KeySeed::Seeded`] (simulation, tests, and the
//! fixed dev seed of `warren up` / `warren token`), or from OS randomness ([`KeySeed::Os`], real
//! mode only). Minting reads time from the `Clock` port. (jsonwebtoken's RustCrypto signer blinds
//! the RSA operation with `thread_rng`; RS256 = PKCS#1 v1.5 signatures do not depend on it, so a
//! token is still a function of the seed, the claims and the simulated time.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ports::Clock;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::{Value, json};
use thiserror::Error;

/// RSA modulus size.
pub const KEY_BITS: usize = 2048;
/// Token lifetime when the request does not say.
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(60 * 60);
/// Longest token lifetime minted.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Most keys published at once; rotating past it retires the oldest.
pub const KEYS_PUBLISHED_MAX: usize = 4;
/// Longest `sub` / `email` (the gateway takes caller ids up to this size).
pub const SUBJECT_BYTES_MAX: usize = 256;
/// The seed `warren up` and `warren token` share, so tokens minted by the CLI are accepted by a
/// running dev system. Public on purpose: this issuer is for development.
pub const DEV_SEED: u64 = 0x7761_7272_656e; // "warren"

/// Where key material comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySeed {
    /// A ChaCha20 stream from this seed: the same seed gives the same keys, in any process.
    Seeded(u64),
    /// OS randomness (real mode).
    Os,
}

/// How the issuer presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The public URL, e.g. `http://127.0.0.1:9000`: the tokens' `iss` and the base of the
    /// discovery document's URLs (so it must be reachable by the validators).
    pub issuer_url: String,
    /// `aud` of minted tokens unless the request says otherwise: the client id the validators
    /// expect.
    pub audience: String,
}

/// Why minting failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IssuerError {
    /// The request breaks a rule (the message says which).
    #[error("{0}")]
    BadRequest(String),
    /// Key generation or signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

struct Keys {
    /// Published keys, oldest first; the last one signs.
    published: Vec<SigningKey>,
}

/// What makes keys: held while one is generated (a second or more of RSA work), apart from
/// [`Keys`], so signing and the JWKS are not held up meanwhile.
struct KeyMaker {
    rng: ChaCha20Rng,
    generated: u64,
}

/// The dev issuer. Share it in an `Arc`.
pub struct Issuer {
    config: IssuerConfig,
    clock: Arc<dyn Clock>,
    maker: Mutex<KeyMaker>,
    keys: Mutex<Keys>,
}

/// What `POST /token` (and [`Issuer::mint`]) takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MintRequest {
    /// The user.
    pub sub: String,
    /// `email`; oauth2-proxy uses `sub` when absent.
    #[serde(default)]
    pub email: Option<String>,
    /// `aud`; the configured audience when absent.
    #[serde(default)]
    pub aud: Option<String>,
    /// Lifetime in seconds, 1 to 86 400; one hour when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

impl MintRequest {
    /// A token for `sub` with the defaults.
    pub fn new(sub: impl Into<String>) -> MintRequest {
        MintRequest {
            sub: sub.into(),
            ..MintRequest::default()
        }
    }
}

impl Issuer {
    /// An issuer with one key.
    pub fn new(
        config: IssuerConfig,
        clock: Arc<dyn Clock>,
        seed: KeySeed,
    ) -> Result<Issuer, IssuerError> {
        let rng = match seed {
            KeySeed::Seeded(seed) => ChaCha20Rng::seed_from_u64(seed),
            KeySeed::Os => os_seeded(),
        };
        let issuer = Issuer {
            config,
            clock,
            maker: Mutex::new(KeyMaker { rng, generated: 0 }),
            keys: Mutex::new(Keys {
                published: Vec::new(),
            }),
        };
        issuer.rotate()?;
        Ok(issuer)
    }

    /// Its configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Generates a key that signs from now on; older keys stay published (up to
    /// [`KEYS_PUBLISHED_MAX`]) so tokens they signed stay valid. Returns the new `kid`.
    pub fn rotate(&self) -> Result<String, IssuerError> {
        // Rotations take turns here, so kids come in order; signing goes on meanwhile.
        let mut maker = self.maker.lock().expect("issuer key maker poisoned");
        let private = RsaPrivateKey::new(&mut maker.rng, KEY_BITS)
            .map_err(|e| IssuerError::Signing(e.to_string()))?;
        maker.generated += 1;
        let n = private.n().to_bytes_be();
        // The kid names the key (first bytes of its modulus) and its place in the rotation.
        let kid = format!(
            "{}-{}",
            URL_SAFE_NO_PAD.encode(&n[..6.min(n.len())]),
            maker.generated
        );
        let der = private
            .to_pkcs1_der()
            .map_err(|e| IssuerError::Signing(e.to_string()))?;
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
        });
        let mut keys = self.keys.lock().expect("issuer keys poisoned");
        keys.published.push(SigningKey {
            kid: kid.clone(),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk,
        });
        if keys.published.len() > KEYS_PUBLISHED_MAX {
            keys.published.remove(0);
        }
        tracing::info!(%kid, "issuer key generated");
        Ok(kid)
    }

    /// Stops publishing `kid` (tokens it signed stop validating once validators refetch). The
    /// signing key cannot be retired. Returns whether it was published.
    pub fn retire(&self, kid: &str) -> bool {
        let mut keys = self.keys.lock().expect("issuer keys poisoned");
        let signing = keys.published.len().saturating_sub(1);
        match keys.published.iter().position(|k| k.kid == kid) {
            Some(i) if i != signing => {
                keys.published.remove(i);
                true
            }
            _ => false,
        }
    }

    /// The `kid` that signs.
    pub fn signing_kid(&self) -> String {
        let keys = self.keys.lock().expect("issuer keys poisoned");
        keys.published
            .last()
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// `{"keys": [...]}`: every published key.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.lock().expect("issuer keys poisoned");
        json!({ "keys": keys.published.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// The discovery document (what oauth2-proxy / go-oidc read).
    pub fn discovery(&self) -> Value {
        let base = self.config.issuer_url.trim_end_matches('/');
        json!({
            "issuer": self.config.issuer_url,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "response_types_supported": ["code", "id_token", "token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "email", "email_verified", "iss", "aud", "exp", "iat", "nbf"],
        })
    }

    /// Mints a token: `iss`, `aud`, `sub`, `email`, `iat`, `nbf`, `exp`, signed by the current key.
    pub fn mint(&self, request: &MintRequest) -> Result<String, IssuerError> {
        let visible = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if request.sub.is_empty() || request.sub.len() > SUBJECT_BYTES_MAX || !visible(&request.sub)
        {
            return Err(IssuerError::BadRequest(
                "sub must be 1 to 256 bytes of visible ASCII".into(),
            ));
        }
        if let Some(email) = &request.email
            && (email.is_empty() || email.len() > SUBJECT_BYTES_MAX || !visible(email))
        {
            return Err(IssuerError::BadRequest(
                "email must be 1 to 256 bytes of visible ASCII".into(),
            ));
        }
        let ttl = request
            .ttl_secs
            .map_or(TOKEN_TTL_DEFAULT, Duration::from_secs);
        if ttl.is_zero() || ttl > TOKEN_TTL_MAX {
            return Err(IssuerError::BadRequest(
                "ttl_secs must be 1 to 86400".into(),
            ));
        }
        let now = self.clock.now_unix_ms().div_euclid(1000);
        let mut claims = json!({
            "iss": self.config.issuer_url,
            "aud": request.aud.as_deref().unwrap_or(&self.config.audience),
            "sub": request.sub,
            "iat": now,
            "nbf": now,
            "exp": now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        });
        if let Some(email) = &request.email {
            claims["email"] = json!(email);
            claims["email_verified"] = json!(true);
        }
        self.sign(&claims)
    }

    /// Signs any claims with the current key: for tests that need a wrong `aud`, an expired
    /// `exp` and the like from a key the validators trust.
    pub fn sign(&self, claims: &Value) -> Result<String, IssuerError> {
        self.sign_with(claims, true)
    }

    /// [`Issuer::sign`] with no `kid` in the header, as an identity provider with a single
    /// key may issue tokens.
    pub fn sign_without_kid(&self, claims: &Value) -> Result<String, IssuerError> {
        self.sign_with(claims, false)
    }

    fn sign_with(&self, claims: &Value, with_kid: bool) -> Result<String, IssuerError> {
        let keys = self.keys.lock().expect("issuer keys poisoned");
        let key = keys
            .published
            .last()
            .ok_or_else(|| IssuerError::Signing("no key".into()))?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = with_kid.then(|| key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| IssuerError::Signing(e.to_string()))
    }

    /// Its HTTP endpoints.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/token", post(token))
            .route("/keys/rotate", post(rotate))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }
}

/// Real mode only: a ChaCha20 stream seeded from the OS.
fn os_seeded() -> ChaCha20Rng {
    ChaCha20Rng::from_rng(rsa::rand_core::OsRng).expect("OS randomness unavailable")
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> Json<Value> {
    Json(issuer.discovery())
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> Response {
    // Validators may cache briefly; rotation is announced by a new kid, which makes them refetch.
    (
        [(axum::http::header::CACHE_CONTROL, "max-age=60")],
        Json(issuer.jwks()),
    )
        .into_response()
}

async fn token(State(issuer): State<Arc<Issuer>>, body: axum::body::Bytes) -> Response {
    let request: MintRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
    };
    match issuer.mint(&request) {
        Ok(token) => Json(json!({
            "access_token": token,
            "id_token": token,
            "token_type": "Bearer",
            "expires_in": request.ttl_secs.unwrap_or(TOKEN_TTL_DEFAULT.as_secs()),
        }))
        .into_response(),
        Err(IssuerError::BadRequest(why)) => oauth_error(StatusCode::BAD_REQUEST, &why),
        Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `POST /keys/rotate` (development): a new signing key; the old ones stay published.
async fn rotate(State(issuer): State<Arc<Issuer>>) -> Response {
    match issuer.rotate() {
        Ok(kid) => Json(json!({ "kid": kid })).into_response(),
        Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn oauth_error(status: StatusCode, description: &str) -> Response {
    (
        status,
        Json(json!({"error": "invalid_request", "error_description": description})),
    )
        .into_response()
}

/// Asks a running issuer's `POST /token` for a token.
pub async fn fetch_token<N: ports::Net>(
    net: &N,
    issuer_url: &str,
    request: &MintRequest,
) -> Result<String, String> {
    let url = format!("{}/token", issuer_url.trim_end_matches('/'));
    let mut body = json!({ "sub": request.sub });
    if let Some(email) = &request.email {
        body["email"] = json!(email);
    }
    if let Some(aud) = &request.aud {
        body["aud"] = json!(aud);
    }
    if let Some(ttl) = request.ttl_secs {
        body["ttl_secs"] = json!(ttl);
    }
    let (status, bytes) =
        crate::http_client::request(net, &url, Some(&body), crate::jwt::FETCH_TIMEOUT).await?;
    let answer: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not JSON: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!("{url} answered {status}: {answer}"));
    }
    answer
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{url}: no access_token in {answer}"))
}
