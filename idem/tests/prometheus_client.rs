//! idem's metrics published through a service's own prometheus-client
//! registry (feature `prometheus-client`): the same families, the same
//! values, no second endpoint.

use std::sync::Arc;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::Request;
use idem::{IdempotencyLayer, MemoryStore};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tower::ServiceExt;

#[tokio::test]
async fn the_layer_publishes_through_a_prometheus_client_registry() {
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()));
    let mut registry = Registry::default();
    // The service's own metric beside idem's.
    let orders: Counter = Counter::default();
    registry.register("orders", "Orders taken.", orders.clone());
    registry.register_collector(Box::new(layer.metrics_handle()));
    let app = Router::new()
        .route("/payments", post(|| async { "charged" }))
        .layer(layer);
    for _ in 0..2 {
        let req = Request::post("/payments")
            .header("idempotency-key", "prom-client-0001")
            .body(Body::from("{}"))
            .expect("request");
        let res = app.clone().oneshot(req).await.expect("call");
        assert_eq!(res.status(), 200);
    }
    orders.inc();

    let mut text = String::new();
    encode(&mut text, &registry).expect("encode");
    let expect = [
        "orders_total 1",
        "# TYPE idempotency_cache_hits counter",
        "idempotency_cache_hits_total{route=\"*\",backend=\"memory\"} 1",
        "idempotency_cache_misses_total{route=\"*\",backend=\"memory\"} 1",
        "idempotency_errors_total{route=\"*\",backend=\"memory\",kind=\"mismatch\"} 0",
        "# TYPE idempotency_store_seconds histogram",
        "idempotency_store_seconds_count{route=\"*\",backend=\"memory\",op=\"begin\"} 2",
        "idempotency_store_seconds_bucket{le=\"+Inf\",route=\"*\",backend=\"memory\",op=\"complete\"} 1",
        "idempotency_processing_seconds_count{route=\"*\",backend=\"memory\"} 1",
        "idempotency_passthrough_total{class=\"2xx\"} 0",
        "idempotency_executions_running{backend=\"memory\"} 0",
    ];
    for line in expect {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    // Cumulative buckets: each at least the one below it.
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("idempotency_store_seconds_bucket") && l.contains("op=\"begin\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(buckets.len(), 15, "{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&2));
}
