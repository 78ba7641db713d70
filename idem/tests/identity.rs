//! Identity scopes through the layer (SPEC "scope"): a verified bearer
//! JWT's claim, a header a trusted proxy sets, an identity the service's
//! own authentication left in the extensions. Two tokens of one subject
//! share records; a token that does not verify gets 401 and never executes
//! or replays; signed keys bind to the verified identity.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use http_body_util::BodyExt;
use idem::signed::sign;
use idem::{
    IdempotencyLayer, JwtScope, MemoryStore, Policy, RoutePolicy, ScopeSource, Secret, Unverified,
};
use idem_testkit::jwt::{self, claims, AUDIENCE, ISSUER};
use tower::ServiceExt;

/// An app whose handler answers with a new payment id per execution.
fn app(scope: ScopeSource, policy: Policy, signing: Option<Secret>) -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()))
        .scope(scope)
        .policy(policy);
    if let Some(s) = signing {
        layer = layer.key_signing_secret(s);
    }
    let app = Router::new()
        .route(
            "/payments",
            post(move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("payment {n}") }
            }),
        )
        .layer(layer);
    (app, calls)
}

struct Answer {
    status: u16,
    body: String,
    replayed: bool,
    challenge: Option<String>,
}

async fn post_with(app: &Router, key: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::post("/payments").header("idempotency-key", key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(r#"{"amount": 1}"#)).expect("request"))
        .await
        .expect("call");
    let status = res.status().as_u16();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        replayed,
        challenge,
    }
}

async fn post_token(app: &Router, key: &str, token: &str) -> Answer {
    post_with(app, key, &[("authorization", &format!("Bearer {token}"))]).await
}

fn jwks_scope() -> JwtScope {
    JwtScope::jwks(jwt::JWKS)
        .expect("the test JWKS")
        .issuer(ISSUER)
        .audience(AUDIENCE)
}

#[tokio::test]
async fn scope_two_tokens_of_one_subject_replay_each_others_answers() {
    for (name, scope, mint) in [
        (
            "hs256",
            JwtScope::hs256(jwt::HS256_SECRET)
                .issuer(ISSUER)
                .audience(AUDIENCE),
            jwt::hs256 as fn(&serde_json::Value) -> String,
        ),
        ("rs256", jwks_scope(), jwt::rs256),
        ("es256", jwks_scope(), jwt::es256),
    ] {
        let (app, calls) = app(ScopeSource::verified(scope), Policy::default(), None);
        let first = mint(&claims("alice", 600, "token-1"));
        let refreshed = mint(&claims("alice", 900, "token-2"));
        assert_ne!(first, refreshed);
        let a = post_token(&app, "order-0001-abcdef", &first).await;
        assert_eq!((a.status, a.replayed), (200, false), "{name}: {}", a.body);
        let b = post_token(&app, "order-0001-abcdef", &refreshed).await;
        assert_eq!((b.status, b.replayed), (200, true), "{name}: {}", b.body);
        assert_eq!(a.body, b.body, "{name}");
        // Another subject with the same key is another scope.
        let c = post_token(&app, "order-0001-abcdef", &mint(&claims("bob", 600, "x"))).await;
        assert_eq!((c.status, c.replayed), (200, false), "{name}");
        assert_ne!(c.body, a.body, "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
    }
    // RS256 and ES256 tokens of one subject, under one JWKS, are one scope.
    let (app, calls) = app(ScopeSource::verified(jwks_scope()), Policy::default(), None);
    let a = post_token(
        &app,
        "order-0002-abcdef",
        &jwt::rs256(&claims("carol", 600, "1")),
    )
    .await;
    let b = post_token(
        &app,
        "order-0002-abcdef",
        &jwt::es256(&claims("carol", 600, "2")),
    )
    .await;
    assert_eq!((a.status, b.status, b.replayed), (200, 200, true));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn scope_a_token_that_does_not_verify_gets_401_and_never_the_victims_replay() {
    let (app, calls) = app(ScopeSource::verified(jwks_scope()), Policy::default(), None);
    let key = "victim-order-000001";
    let victim = post_token(&app, key, &jwt::es256(&claims("victim", 600, "v"))).await;
    assert_eq!(victim.status, 200);

    let mut expired = claims("victim", -3600, "old");
    let mut wrong_aud = claims("victim", 600, "a");
    wrong_aud["aud"] = "another-service".into();
    let mut wrong_iss = claims("victim", 600, "i");
    wrong_iss["iss"] = "https://evil.example/".into();
    let mut no_sub = claims("victim", 600, "n");
    no_sub.as_object_mut().map(|o| o.remove("sub"));
    expired["jti"] = "expired".into();
    for (why, token) in [
        (
            "forged signature",
            jwt::forged_es256(&claims("victim", 600, "f")),
        ),
        (
            "HS256 with another secret",
            jwt::forged_hs256(&claims("victim", 600, "h")),
        ),
        ("expired", jwt::es256(&expired)),
        ("wrong audience", jwt::es256(&wrong_aud)),
        ("wrong issuer", jwt::rs256(&wrong_iss)),
        ("no sub claim", jwt::es256(&no_sub)),
        ("alg none", jwt::unsigned(&claims("victim", 600, "u"))),
        (
            "algorithm confusion",
            jwt::confused_hs256(&claims("victim", 600, "c")),
        ),
        ("not a JWT", "victim".to_owned()),
    ] {
        let a = post_token(&app, key, &token).await;
        assert_eq!(a.status, 401, "{why}: {}", a.body);
        assert!(
            a.body
                .contains("\"type\":\"urn:idem:problem:unauthenticated\""),
            "{why}: {}",
            a.body
        );
        assert!(!a.body.contains(&victim.body), "{why}");
        assert!(!a.replayed, "{why}");
        assert!(
            a.challenge
                .as_deref()
                .is_some_and(|c| c.starts_with("Bearer")),
            "{why}: {:?}",
            a.challenge
        );
    }
    // A Basic credential is not a bearer token.
    let a = post_with(&app, key, &[("authorization", "Basic dmljdGltOnB3")]).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "nothing but the victim's request executed"
    );

    // No credentials at all: the anonymous scope, which is not the victim's.
    let anon = post_with(&app, key, &[]).await;
    assert_eq!((anon.status, anon.replayed), (200, false));
    assert_ne!(anon.body, victim.body);
}

#[tokio::test]
async fn scope_leeway_accepts_a_token_just_past_its_expiry() {
    let scope = JwtScope::hs256(jwt::HS256_SECRET)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .leeway(Duration::from_secs(60));
    let (app, _) = app(ScopeSource::verified(scope), Policy::default(), None);
    let a = post_token(
        &app,
        "order-0003-abcdef",
        &jwt::hs256(&claims("dave", -10, "l")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let b = post_token(
        &app,
        "order-0004-abcdef",
        &jwt::hs256(&claims("dave", -120, "l")),
    )
    .await;
    assert_eq!(b.status, 401, "{}", b.body);
}

#[tokio::test]
async fn signed_keys_bind_to_the_verified_identity() {
    let secret = Secret::from_bytes(*b"signing-secret-signing-secret-00").expect("secret");
    let policy = Policy::default().default_policy(RoutePolicy::default().require_signed_keys(true));
    let (app, calls) = app(
        ScopeSource::verified(jwks_scope()),
        policy,
        Some(secret.clone()),
    );
    // Signed for the subject, not for a token: any token of alice works.
    let signed = sign(&secret, "order-0005-abcdef", b"alice");
    let a = post_token(&app, &signed, &jwt::rs256(&claims("alice", 600, "1"))).await;
    assert_eq!((a.status, a.replayed), (200, false), "{}", a.body);
    let b = post_token(&app, &signed, &jwt::es256(&claims("alice", 600, "2"))).await;
    assert_eq!((b.status, b.replayed), (200, true), "{}", b.body);
    // Bob holding alice's signed key: refused.
    let c = post_token(&app, &signed, &jwt::es256(&claims("bob", 600, "3"))).await;
    assert_eq!(c.status, 400, "{}", c.body);
    assert!(c.body.contains("idempotency-key-invalid"), "{}", c.body);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn scope_from_a_trusted_proxy_header_ignores_rotating_credentials() {
    let (app, calls) = app(
        ScopeSource::Header(http::HeaderName::from_static("x-user-id")),
        Policy::default(),
        None,
    );
    let a = post_with(
        &app,
        "order-0006-abcdef",
        &[("x-user-id", "42"), ("authorization", "Bearer one")],
    )
    .await;
    let b = post_with(
        &app,
        "order-0006-abcdef",
        &[("x-user-id", "42"), ("authorization", "Bearer two")],
    )
    .await;
    let c = post_with(
        &app,
        "order-0006-abcdef",
        &[("x-user-id", "43"), ("authorization", "Bearer one")],
    )
    .await;
    assert_eq!((a.replayed, b.replayed, c.replayed), (false, true, false));
    assert_eq!(a.body, b.body);
    assert_ne!(a.body, c.body);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// What a service's own authentication middleware leaves in the extensions.
#[derive(Clone)]
struct UserId(u64);

#[tokio::test]
async fn scope_from_an_identity_in_the_extensions() {
    let identify = |parts: &http::request::Parts| match parts.extensions.get::<UserId>() {
        Some(UserId(id)) => Ok(Some(id.to_be_bytes().to_vec())),
        None => Err(Unverified::new("sign in first")),
    };
    let (app, calls) = app(ScopeSource::verified(identify), Policy::default(), None);
    let call = |user: Option<u64>| {
        let app = app.clone();
        async move {
            let mut req = Request::post("/payments")
                .header("idempotency-key", "order-0007-abcdef")
                .body(Body::from("{}"))
                .expect("request");
            if let Some(u) = user {
                req.extensions_mut().insert(UserId(u));
            }
            let res = app.oneshot(req).await.expect("call");
            (
                res.status().as_u16(),
                res.headers().contains_key("idempotent-replayed"),
            )
        }
    };
    assert_eq!(call(Some(7)).await, (200, false));
    assert_eq!(call(Some(7)).await, (200, true));
    assert_eq!(call(Some(8)).await, (200, false));
    assert_eq!(call(None).await, (401, false));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_jwks_that_cannot_be_used_is_refused_with_what_to_do() {
    for (jwks, says) in [
        ("{}", "not a JSON Web Key Set"),
        (r#"{"keys": []}"#, "holds no public key"),
        (
            r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#,
            "symmetric key",
        ),
    ] {
        let e = JwtScope::jwks(jwks).expect_err(jwks).to_string();
        assert!(e.contains(says), "{jwks}: {e}");
    }
    assert!(JwtScope::try_hs256(b"short").is_err());
}
