//! What a service using the layer can see: the access line of each request
//! (off by default, one per request when on, its outcome once) and the
//! series of requests the layer passes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use http::Request;
use idem::{IdempotencyLayer, MemoryStore};
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

/// The fields of every `idem::access` event, in order.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "idem::access" {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            if let Ok(mut lines) = self.0.lock() {
                lines.push(fields);
            }
        }
    }
}

fn app(layer: IdempotencyLayer) -> Router {
    Router::new()
        .route(
            "/payments",
            post(|| async { (http::StatusCode::CREATED, "charged") }),
        )
        .route("/payments/{id}", get(|| async { "a payment" }))
        .layer(layer)
}

async fn call(app: &Router, req: Request<Body>) -> http::StatusCode {
    let res = app.clone().oneshot(req).await.expect("call");
    let status = res.status();
    let _ = axum::body::to_bytes(res.into_body(), 1 << 16).await;
    status
}

fn pay(key: &str, body: &'static str) -> Request<Body> {
    Request::post("/payments")
        .header("idempotency-key", key)
        .body(Body::from(body))
        .expect("request")
}

async fn drive(app: &Router) {
    assert_eq!(call(app, pay("lib-access-0001", "{}")).await, 201);
    assert_eq!(call(app, pay("lib-access-0001", "{}")).await, 201);
    assert_eq!(call(app, pay("lib-access-0001", "{\"a\":1}")).await, 422);
    let get = Request::get("/payments/9")
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(app, get).await, 200);
}

#[tokio::test]
async fn the_access_line_is_off_by_default_and_one_per_request_when_on() {
    let lines = Lines::default();
    let subscriber = tracing_subscriber::registry().with(lines.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    drive(&app(IdempotencyLayer::new(Arc::new(MemoryStore::new())))).await;
    assert!(lines.0.lock().expect("lines").is_empty());

    drive(&app(
        IdempotencyLayer::new(Arc::new(MemoryStore::new())).access_log(true)
    ))
    .await;
    let lines = lines.0.lock().expect("lines").clone();
    let said: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["outcome"].as_str(),
                l["status"].as_str(),
                l["route"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            ("executed", "201", "*"),
            ("replayed", "201", "*"),
            ("idempotency-key-reused", "422", "*"),
            ("passed-through", "200", "-"),
        ]
    );
    assert_eq!(lines[0]["key"], lines[1]["key"]);
    assert_eq!(lines[0]["key"].len(), 8);
    assert!(lines[0].contains_key("upstream_ms"));
    assert!(!lines[1].contains_key("upstream_ms"));
    assert_eq!(lines[3]["path"], "/payments/9");
    assert_eq!(lines[3]["method"], "GET");
}

#[tokio::test]
async fn requests_passed_through_have_their_series() {
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()));
    let metrics = layer.metrics_handle();
    let app = app(layer);
    let text = metrics.render();
    assert!(
        text.contains("idempotency_passthrough_total{class=\"2xx\"} 0\n"),
        "{text}"
    );
    drive(&app).await;
    let text = metrics.render();
    assert!(
        text.contains("idempotency_passthrough_total{class=\"2xx\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("idempotency_passthrough_total{class=\"4xx\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("idempotency_passthrough_seconds_count 1\n"),
        "{text}"
    );
    // Covered requests count in their own series, not here.
    assert!(
        text.contains("idempotency_cache_hits_total{route=\"*\",backend=\"memory\"} 1\n"),
        "{text}"
    );
}
