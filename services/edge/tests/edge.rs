//! The three edge roles over real sockets (tokio TCP on 127.0.0.1): every status and header the
//! issue names, every kind of bad token, key rotation and an issuer outage, WebSocket proxying.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edge::jwt::{KeySource, StaticJwks};
use edge::{EdgeConfig, MintRequest, TokenError, Verifier, VerifierConfig};
use futures::{SinkExt, StreamExt};
use ports::{Clock, SystemClock};
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn now_secs() -> i64 {
    SystemClock.now_unix_ms() / 1000
}

/// Claims the verifier accepts, from the issuer at `iss`.
fn good_claims(iss: &str, sub: &str) -> serde_json::Value {
    json!({"iss": iss, "aud": AUDIENCE, "sub": sub, "iat": now_secs(), "nbf": now_secs(), "exp": now_secs() + 600})
}

#[tokio::test]
async fn issuer_publishes_discovery_jwks_and_mints_tokens() {
    let (issuer, running) = issuer(1).await;
    let discovery = send(
        running.addr,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        "",
    )
    .await;
    assert_eq!(discovery.status, 200);
    let discovery = discovery.json();
    assert_eq!(discovery["issuer"], running.url());
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/.well-known/jwks.json", running.url())
    );

    let jwks = send(running.addr, "GET", "/.well-known/jwks.json", &[], "")
        .await
        .json();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[0]["alg"].as_str()),
        (Some("RSA"), Some("RS256"))
    );
    assert_eq!(keys[0]["kid"], issuer.signing_kid());

    let minted = send(
        running.addr,
        "POST",
        "/token",
        &[("content-type", "application/json")],
        r#"{"sub":"alice","email":"alice@example.com"}"#,
    )
    .await;
    assert_eq!(minted.status, 200, "{}", minted.text());
    let token = minted.json()["access_token"].as_str().unwrap().to_owned();
    let claims = verifier(&running.url()).verify(&token).await.unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.email.as_deref()),
        ("alice", Some("alice@example.com"))
    );

    let refused = send(running.addr, "POST", "/token", &[], r#"{"sub":""}"#).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"], "invalid_request");

    // Rotation: a second key, published beside the first, signs from now on.
    let rotated = send(running.addr, "POST", "/keys/rotate", &[], "").await;
    assert_eq!(rotated.status, 200);
    let new_kid = rotated.json()["kid"].as_str().unwrap().to_owned();
    assert_eq!(issuer.signing_kid(), new_kid);
    let jwks = send(running.addr, "GET", "/.well-known/jwks.json", &[], "")
        .await
        .json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn the_same_seed_gives_the_same_keys() {
    let config = edge::IssuerConfig {
        issuer_url: "http://issuer".into(),
        audience: AUDIENCE.into(),
    };
    let make = |seed| {
        edge::Issuer::new(
            config.clone(),
            Arc::new(SystemClock),
            edge::KeySeed::Seeded(seed),
        )
        .unwrap()
    };
    let (a, b, c) = (make(7), make(7), make(8));
    assert_eq!(a.jwks(), b.jwks());
    assert_ne!(a.jwks(), c.jwks());
}

#[tokio::test]
async fn auth_proxy_without_a_token_answers_401_json_and_with_a_bad_one_403_forbidden() {
    let (issuer, iss) = issuer(2).await;
    let upstream = stub_upstream().await;
    let proxy = auth_proxy(verifier(&iss.url()), upstream.addr).await;

    let none = post_graphql(proxy.addr, None, &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("content-type"), Some("application/json"));
    assert_eq!(none.text(), "{}");
    let basic = send(
        proxy.addr,
        "POST",
        "/graphql",
        &[("authorization", "Basic YTpi")],
        "",
    )
    .await;
    assert_eq!(basic.status, 401, "not a bearer token: no token");

    let good = issuer.mint(&MintRequest::new("alice")).unwrap();
    let (header, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let kid = issuer.signing_kid();

    // A second issuer's key, with the trusted kid: a forged signature.
    let (forger, _forger_running) = support::issuer(99).await;
    let forged_claims = b64(good_claims(&iss.url(), "mallory"));
    let forged_body = forger.sign(&good_claims(&iss.url(), "mallory")).unwrap();
    let forged_signature = forged_body.rsplit('.').next().unwrap();
    let forged = format!("{header}.{forged_claims}.{forged_signature}");
    // A valid signature over other claims: tampered.
    let tampered = format!("{header}.{forged_claims}.{signature}");
    let expired = issuer
        .sign(&json!({"iss": iss.url(), "aud": AUDIENCE, "sub": "alice", "exp": now_secs() - 3600}))
        .unwrap();
    let not_yet = issuer
        .sign(&json!({"iss": iss.url(), "aud": AUDIENCE, "sub": "alice", "nbf": now_secs() + 3600, "exp": now_secs() + 7200}))
        .unwrap();
    let wrong_audience = issuer
        .mint(&MintRequest {
            aud: Some("someone-else".into()),
            ..MintRequest::new("alice")
        })
        .unwrap();
    let mut wrong_issuer_claims = good_claims(&iss.url(), "alice");
    wrong_issuer_claims["iss"] = json!("http://evil.example");
    let wrong_issuer = issuer.sign(&wrong_issuer_claims).unwrap();
    let no_sub = issuer
        .sign(&json!({"iss": iss.url(), "aud": AUDIENCE, "exp": now_secs() + 600}))
        .unwrap();
    let none_header = b64(json!({"alg": "none", "typ": "JWT", "kid": kid}));
    let alg_none_signed = format!(
        "{none_header}.{}.c2ln",
        b64(good_claims(&iss.url(), "alice"))
    );
    // HS256 keyed with the RSA public key (the classic confusion attack).
    let jwks = issuer.jwks();
    let public_n = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &good_claims(&iss.url(), "alice"),
        &jsonwebtoken::EncodingKey::from_secret(public_n.as_bytes()),
    )
    .unwrap();

    for (name, token) in [
        ("forged", &forged),
        ("tampered", &tampered),
        ("expired", &expired),
        ("not yet valid", &not_yet),
        ("wrong audience", &wrong_audience),
        ("wrong issuer", &wrong_issuer),
        ("no sub", &no_sub),
        ("alg none with a signature", &alg_none_signed),
        ("HS256 with the public key", &hs256),
    ] {
        let answer = post_graphql(proxy.addr, Some(token), &[]).await;
        assert_eq!(answer.status, 403, "{name} token must be refused");
        assert_eq!(answer.text(), "Forbidden", "{name}");
        assert!(
            answer
                .header("content-type")
                .unwrap()
                .starts_with("text/plain")
        );
    }
    // Unsigned `alg: none` does not even look like a JWT to oauth2-proxy: "no token".
    let alg_none = format!("{none_header}.{}.", b64(good_claims(&iss.url(), "alice")));
    assert_eq!(
        post_graphql(proxy.addr, Some(&alg_none), &[]).await.status,
        401
    );

    // The verifier says why, for the logs.
    let v = verifier(&iss.url());
    assert_eq!(v.verify(&expired).await, Err(TokenError::Expired));
    assert_eq!(v.verify(&not_yet).await, Err(TokenError::NotYetValid));
    assert!(matches!(
        v.verify(&hs256).await,
        Err(TokenError::Algorithm(_))
    ));
    assert!(matches!(
        v.verify(&alg_none).await,
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        v.verify(&wrong_audience).await,
        Err(TokenError::Invalid(_))
    ));
}

#[tokio::test]
async fn auth_proxy_passes_identity_headers_keeps_authorization_and_strips_spoofed_ones() {
    let (issuer, iss) = issuer(3).await;
    let upstream = stub_upstream().await;
    let proxy = auth_proxy(verifier(&iss.url()), upstream.addr).await;
    let token = issuer
        .mint(&MintRequest {
            email: Some("alice@example.com".into()),
            ..MintRequest::new("alice")
        })
        .unwrap();
    let answer = post_graphql(
        proxy.addr,
        Some(&token),
        &[
            ("x-forwarded-user", "admin"),
            ("x-forwarded-email", "admin@example.com"),
            ("x-forwarded-groups", "admins"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = answer.json();
    assert_eq!(seen["x-forwarded-user"], "alice");
    assert_eq!(seen["x-forwarded-email"], "alice@example.com");
    assert_eq!(seen["authorization"], format!("Bearer {token}"));
    assert!(seen.get("x-forwarded-groups").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");

    // Without an email claim, oauth2-proxy passes the user as the email.
    let token = issuer.mint(&MintRequest::new("bob")).unwrap();
    let seen = post_graphql(proxy.addr, Some(&token), &[]).await.json();
    assert_eq!(seen["x-forwarded-email"], "bob");

    let ping = send(proxy.addr, "GET", "/ping", &[], "").await;
    assert_eq!((ping.status, ping.text().as_str()), (200, "OK"));
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_and_an_issuer_outage_keeps_the_last_good_keys() {
    let (issuer, iss) = issuer(4).await;
    let upstream = stub_upstream().await;
    let verifier = Arc::new(Verifier::new(
        VerifierConfig {
            refetch_cooldown: Duration::ZERO,
            ..VerifierConfig::new(iss.url(), AUDIENCE)
        },
        Arc::new(SystemClock),
        Arc::new(edge::DiscoveredJwks::new(ports::TokioNet, iss.url())),
    ));
    let proxy = auth_proxy(verifier.clone(), upstream.addr).await;
    let old = issuer.mint(&MintRequest::new("alice")).unwrap();
    assert_eq!(post_graphql(proxy.addr, Some(&old), &[]).await.status, 200);

    let new_kid = issuer.rotate().unwrap();
    let new = issuer.mint(&MintRequest::new("alice")).unwrap();
    assert!(!verifier.kids().contains(&new_kid));
    assert_eq!(
        post_graphql(proxy.addr, Some(&new), &[]).await.status,
        200,
        "refetched on the new kid"
    );
    assert!(verifier.kids().contains(&new_kid));

    // The issuer goes away: the keys held keep working; a key it never published does not.
    let third = issuer.rotate().unwrap();
    let unseen = issuer.mint(&MintRequest::new("alice")).unwrap();
    drop(iss);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The unknown kid first: its refetch fails, and the keys held must survive that.
    assert_eq!(
        post_graphql(proxy.addr, Some(&unseen), &[]).await.status,
        403
    );
    assert!(!verifier.kids().contains(&third));
    assert_eq!(post_graphql(proxy.addr, Some(&old), &[]).await.status, 200);
    assert_eq!(post_graphql(proxy.addr, Some(&new), &[]).await.status, 200);
}

/// Counts fetches of a fixed JWKS.
struct Counting {
    inner: StaticJwks,
    fetches: Arc<AtomicUsize>,
}

impl KeySource for Counting {
    fn fetch(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<jsonwebtoken::jwk::JwkSet, String>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch()
    }
}

#[tokio::test]
async fn refetches_for_unknown_kids_are_rate_limited() {
    let (issuer, iss) = issuer(5).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let source = Counting {
        inner: StaticJwks(serde_json::from_value(issuer.jwks()).unwrap()),
        fetches: fetches.clone(),
    };
    let verifier = Verifier::new(
        VerifierConfig::new(iss.url(), AUDIENCE),
        Arc::new(SystemClock),
        Arc::new(source),
    );
    verifier.refresh().await.unwrap();
    let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    for i in 0..20 {
        let header = b64(json!({"alg": "RS256", "kid": format!("random-{i}")}));
        let token = format!("{header}.{}.c2ln", b64(good_claims(&iss.url(), "x")));
        assert!(matches!(
            verifier.verify(&token).await,
            Err(TokenError::UnknownKey(_))
        ));
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "20 unknown kids within the cooldown: no refetch"
    );
    let good = issuer.mint(&MintRequest::new("alice")).unwrap();
    assert!(verifier.verify(&good).await.is_ok());
}

#[tokio::test]
async fn auth_proxy_proxies_websockets_for_valid_tokens_only() {
    let (issuer, iss) = issuer(6).await;
    let upstream = stub_upstream().await;
    let proxy = auth_proxy(verifier(&iss.url()), upstream.addr).await;
    assert_eq!(websocket(proxy.addr, None).await.err(), Some(401));
    let forged = format!("{}x", issuer.mint(&MintRequest::new("alice")).unwrap());
    assert_eq!(websocket(proxy.addr, Some(&forged)).await.err(), Some(403));
    let token = issuer.mint(&MintRequest::new("alice")).unwrap();
    let mut socket = websocket(proxy.addr, Some(&token)).await.unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "alice:hello");
}

#[tokio::test]
async fn edge_routes_graphql_with_forwarded_headers_and_a_request_id() {
    let upstream = stub_upstream().await;
    let kong = kong(EdgeConfig::new(upstream.addr.to_string())).await;
    let answer = post_graphql(
        kong.addr,
        None,
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = answer.json();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        seen["x-real-ip"], "127.0.0.1",
        "the client's own X-Real-IP is not trusted"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-port"], kong.addr.port().to_string());
    let request_id = seen["x-kong-request-id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer.header("x-kong-request-id"),
        Some(request_id.as_str())
    );
    assert!(answer.header("ratelimit-remaining").is_some());
    let next = post_graphql(kong.addr, None, &[]).await;
    assert_ne!(
        next.header("x-kong-request-id"),
        Some(request_id.as_str()),
        "one id per request"
    );

    let other = send(kong.addr, "GET", "/admin", &[], "").await;
    assert_eq!(other.status, 404);
    assert_eq!(
        other.json()["message"],
        "no Route matched with those values"
    );
}

#[tokio::test]
async fn edge_rate_limits_per_client_with_429_and_retry_after() {
    let upstream = stub_upstream().await;
    let kong = kong(EdgeConfig {
        rate_limit: 3,
        rate_window: Duration::from_secs(2),
        ..EdgeConfig::new(upstream.addr.to_string())
    })
    .await;
    for _ in 0..3 {
        assert_eq!(post_graphql(kong.addr, None, &[]).await.status, 200);
    }
    let limited = post_graphql(kong.addr, None, &[]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["message"], "API rate limit exceeded");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        post_graphql(kong.addr, None, &[]).await.status,
        200,
        "admitted after Retry-After"
    );
}

#[tokio::test]
async fn edge_refuses_large_bodies_with_413() {
    let upstream = stub_upstream().await;
    let kong = kong(EdgeConfig {
        body_bytes_max: 1024,
        ..EdgeConfig::new(upstream.addr.to_string())
    })
    .await;
    let big = vec![b'x'; 2048];
    let answer = send(
        kong.addr,
        "POST",
        "/graphql",
        &[("content-type", "application/json")],
        big,
    )
    .await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["message"], "Request size limit exceeded");
    let small = send(
        kong.addr,
        "POST",
        "/graphql",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(small.status, 200);
}

#[tokio::test]
async fn edge_answers_504_on_a_slow_upstream_and_502_on_a_missing_one() {
    let upstream = stub_upstream().await;
    let kong_slow = kong(EdgeConfig {
        read_timeout: Duration::from_millis(200),
        ..EdgeConfig::new(upstream.addr.to_string())
    })
    .await;
    let slow = send(
        kong_slow.addr,
        "POST",
        "/graphql?sleep_ms=2000",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(slow.status, 504);
    assert_eq!(slow.json()["message"], "The upstream server is timing out");

    let gone = upstream.addr;
    drop(upstream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let kong_gone = kong(EdgeConfig::new(gone.to_string())).await;
    let answer = post_graphql(kong_gone.addr, None, &[]).await;
    assert_eq!(answer.status, 502);
}

#[tokio::test]
async fn edge_and_auth_proxy_carry_a_websocket_end_to_end() {
    let (issuer, iss) = issuer(7).await;
    let upstream = stub_upstream().await;
    let proxy = auth_proxy(verifier(&iss.url()), upstream.addr).await;
    let kong = kong(EdgeConfig::new(proxy.addr.to_string())).await;
    assert_eq!(websocket(kong.addr, None).await.err(), Some(401));
    let token = issuer.mint(&MintRequest::new("carol")).unwrap();
    let mut socket = websocket(kong.addr, Some(&token)).await.unwrap();
    for i in 0..3 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("carol:m{i}"));
    }
    // HTTP through both, too.
    let seen = post_graphql(kong.addr, Some(&token), &[]).await.json();
    assert_eq!(seen["x-forwarded-user"], "carol");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1, 127.0.0.1");
    assert!(seen["x-kong-request-id"].is_string());
}

#[tokio::test]
async fn edge_cuts_an_idle_websocket_tunnel_after_its_read_timeout() {
    let upstream = stub_upstream().await;
    let kong = kong(EdgeConfig {
        read_timeout: Duration::from_millis(300),
        ..EdgeConfig::new(upstream.addr.to_string())
    })
    .await;
    let mut socket = websocket(kong.addr, None).await.unwrap();
    // Traffic keeps it open past the timeout...
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("-:m{i}"));
    }
    // ...silence does not.
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the edge cut the idle tunnel");
}

#[tokio::test]
async fn a_client_cannot_have_the_proxies_own_headers_removed_by_naming_them_in_connection() {
    let (issuer, iss) = issuer(11).await;
    let upstream = stub_upstream().await;
    let proxy = auth_proxy(verifier(&iss.url()), upstream.addr).await;
    let token = issuer.mint(&MintRequest::new("alice")).unwrap();
    let seen = post_graphql(
        proxy.addr,
        Some(&token),
        &[
            (
                "connection",
                "X-Forwarded-User, X-Forwarded-Email, X-Forwarded-For, X-Client-Hop",
            ),
            ("x-client-hop", "named in Connection, so hop-by-hop"),
        ],
    )
    .await
    .json();
    assert_eq!(seen["x-forwarded-user"], "alice", "{seen}");
    assert_eq!(seen["x-forwarded-email"], "alice", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert!(seen.get("x-client-hop").is_none(), "{seen}");

    let kong = kong(EdgeConfig::new(upstream.addr.to_string())).await;
    let seen = post_graphql(
        kong.addr,
        None,
        &[(
            "connection",
            "X-Forwarded-For, X-Real-IP, X-Kong-Request-Id, X-Forwarded-Proto",
        )],
    )
    .await
    .json();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert!(seen.get("x-kong-request-id").is_some(), "{seen}");
}

#[tokio::test]
async fn every_x_forwarded_for_line_is_kept_in_order() {
    let upstream = stub_upstream().await;
    let kong = kong(EdgeConfig::new(upstream.addr.to_string())).await;
    let seen = post_graphql(
        kong.addr,
        None,
        &[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "203.0.113.2, 198.51.100.7"),
        ],
    )
    .await
    .json();
    assert_eq!(
        seen["x-forwarded-for"],
        "203.0.113.1, 203.0.113.2, 198.51.100.7, 127.0.0.1"
    );
}

#[tokio::test]
async fn only_a_get_that_asks_for_an_upgrade_escapes_the_body_limit() {
    let upstream = stub_upstream().await;
    let kong = kong(EdgeConfig {
        body_bytes_max: 1024,
        ..EdgeConfig::new(upstream.addr.to_string())
    })
    .await;
    let big = vec![b'x'; 4096];
    let answer = send(
        kong.addr,
        "POST",
        "/graphql",
        &[
            ("content-type", "application/json"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ],
        big,
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    // A real handshake still goes through.
    assert!(websocket(kong.addr, None).await.is_ok());
}

/// A `Net` whose connections never complete: an upstream that drops packets.
#[derive(Clone)]
struct Blackhole;

impl ports::Net for Blackhole {
    type Listener = tokio::net::TcpListener;
    type Stream = tokio::net::TcpStream;

    async fn bind(&self, addr: &str) -> std::io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn connect(&self, _addr: &str) -> std::io::Result<Self::Stream> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn edge_answers_504_when_the_upstream_connection_times_out() {
    use ports::Net as _;
    let listener = ports::TokioNet.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = EdgeConfig {
        connect_timeout: Duration::from_millis(200),
        ..EdgeConfig::new("10.0.0.1:8080")
    };
    tokio::spawn(edge::run_edge(Blackhole, listener, config, async move {
        let _ = stopped.await;
    }));
    let answer = post_graphql(addr, None, &[]).await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(
        answer.json()["message"],
        "The upstream server is timing out"
    );
}

#[tokio::test]
async fn a_silent_connection_is_cut_and_connections_past_the_limit_wait_for_a_slot() {
    use ports::Net as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = ports::TokioNet.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "OK" }));
    tokio::spawn(edge::auth_proxy::serve_with(
        listener,
        router,
        async move {
            let _ = stopped.await;
        },
        1,
        Duration::from_millis(800),
    ));
    // The one slot: a client that connects and sends nothing.
    let mut silent = ports::TokioNet.connect(&addr.to_string()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The next connection is not served while the silent one holds the slot...
    let mut next = ports::TokioNet.connect(&addr.to_string()).await.unwrap();
    next.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(300), next.read_to_end(&mut answer)).await;
    assert!(
        early.is_err(),
        "served past the connection limit: {answer:?}"
    );
    // ...the silent one is cut when its header time runs out...
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest)).await;
    assert!(
        cut.is_ok(),
        "a silent connection was held past its header timeout"
    );
    // ...and then the waiting one is served.
    tokio::time::timeout(Duration::from_secs(10), next.read_to_end(&mut answer))
        .await
        .expect("served once the slot is free")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn keys_from_a_discovery_document_that_names_another_issuer_are_refused() {
    let (_issuer, iss) = issuer(12).await;
    // The same server under another name: its document says it is http://127.0.0.1:PORT.
    let elsewhere = format!("http://localhost:{}", iss.addr.port());
    let fetched = edge::DiscoveredJwks::new(ports::TokioNet, elsewhere)
        .fetch()
        .await;
    let error = fetched.expect_err("keys trusted from a document of another issuer");
    assert!(error.contains("names the issuer"), "{error}");
    let fetched = edge::DiscoveredJwks::new(ports::TokioNet, iss.url())
        .fetch()
        .await;
    assert!(fetched.is_ok(), "{fetched:?}");
}

#[tokio::test]
async fn a_token_without_kid_is_checked_against_every_key_as_go_oidc_does() {
    let (issuer, iss) = issuer(13).await;
    let upstream = stub_upstream().await;
    let proxy = auth_proxy(verifier(&iss.url()), upstream.addr).await;
    // An older key first: the token is signed by the newest, which is not the first tried.
    issuer.rotate().unwrap();
    let claims = good_claims(&iss.url(), "alice");
    let no_kid = issuer.sign_without_kid(&claims).unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(no_kid.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(header.get("kid").is_none(), "{header}");
    let answer = post_graphql(proxy.addr, Some(&no_kid), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["x-forwarded-user"], "alice");
    // Without a kid, a key the issuer never published still signs nothing it accepts, and a
    // good signature over claims for someone else is still refused on its claims.
    let (forger, _forger_running) = support::issuer(98).await;
    let forged = forger.sign_without_kid(&claims).unwrap();
    assert_eq!(
        post_graphql(proxy.addr, Some(&forged), &[]).await.status,
        403
    );
    let mut other_audience = claims.clone();
    other_audience["aud"] = json!("someone-else");
    let wrong = issuer.sign_without_kid(&other_audience).unwrap();
    assert_eq!(
        post_graphql(proxy.addr, Some(&wrong), &[]).await.status,
        403
    );
}

#[tokio::test]
async fn an_https_issuer_is_discovered_over_tls_and_an_untrusted_certificate_is_refused() {
    use ports::Net as _;
    // A self-signed certificate for localhost, and the dev issuer served behind it.
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = certified.cert.der().to_vec();
    let key_der = certified.key_pair.serialize_der();
    let listener = ports::TokioNet.bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer_url = format!("https://localhost:{port}");
    let issuer = Arc::new(
        edge::Issuer::new(
            edge::IssuerConfig {
                issuer_url: issuer_url.clone(),
                audience: AUDIENCE.into(),
            },
            Arc::new(SystemClock),
            edge::KeySeed::Seeded(14),
        )
        .unwrap(),
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der.clone())],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let router = issuer.clone().router();
    tokio::spawn(async move {
        use tower::ServiceExt as _;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate gives up here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        router.clone().oneshot(request.map(axum::body::Body::new))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let trusted = edge::jwt::http_client::Tls::with_roots([cert_der]).unwrap();
    let verifier = Verifier::new(
        VerifierConfig::new(issuer_url.clone(), AUDIENCE),
        Arc::new(SystemClock),
        Arc::new(edge::DiscoveredJwks::new(ports::TokioNet, issuer_url.clone()).with_tls(trusted)),
    );
    assert_eq!(verifier.refresh().await, Ok(1), "keys fetched over TLS");
    let token = issuer.mint(&MintRequest::new("alice")).unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().sub, "alice");

    // The public roots do not vouch for a self-signed certificate: nothing is fetched.
    let error = edge::DiscoveredJwks::new(ports::TokioNet, issuer_url)
        .fetch()
        .await
        .unwrap_err();
    assert!(error.contains("TLS with localhost"), "{error}");
}
