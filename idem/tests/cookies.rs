//! The Set-Cookie replay policy: by default a stored cookie is replayed to
//! its scope (the same user) and dropped in the anonymous scope, where a
//! leaked key would hand another client's cookie to whoever sends it.

use std::sync::Arc;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use idem::{IdempotencyLayer, MemoryStore, Policy, RoutePolicy, SetCookieReplay};
use tower::ServiceExt;

fn app(policy: SetCookieReplay) -> Router {
    Router::new()
        .route(
            "/login",
            post(|| async {
                (
                    [
                        ("set-cookie", "session=abc123; HttpOnly"),
                        ("x-other", "kept"),
                    ],
                    "welcome",
                )
            }),
        )
        .layer(IdempotencyLayer::new(Arc::new(MemoryStore::new())).policy(
            Policy::default().default_policy(RoutePolicy::default().replay_set_cookie(policy)),
        ))
}

/// Sends the same request twice; returns the replay's Set-Cookie values.
async fn replayed_cookies(app: &Router, user: Option<&str>) -> Vec<String> {
    let mut last = None;
    for _ in 0..2 {
        let mut req = Request::post("/login").header("idempotency-key", "cookie-key-000001");
        if let Some(u) = user {
            req = req.header("authorization", u);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::from("{}")).expect("request"))
            .await
            .expect("call");
        assert_eq!(res.status(), 200);
        last = Some(res);
    }
    let res = last.expect("a replay");
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(res.headers()["x-other"], "kept");
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn cookies_are_replayed_to_their_user_only_by_default() {
    let scoped = app(SetCookieReplay::default());
    assert_eq!(
        replayed_cookies(&scoped, Some("Bearer alice")).await,
        ["session=abc123; HttpOnly"]
    );
    assert!(replayed_cookies(&scoped, None).await.is_empty());
    assert_eq!(
        replayed_cookies(&app(SetCookieReplay::Always), None).await,
        ["session=abc123; HttpOnly"]
    );
    assert!(
        replayed_cookies(&app(SetCookieReplay::Never), Some("Bearer alice"))
            .await
            .is_empty()
    );
}
