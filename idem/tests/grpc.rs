//! gRPC unary calls through the layer, with a tonic service and a tonic
//! client: the key is the `idempotency-key` metadata; the answer and its
//! trailers are stored and replayed; refusals are gRPC statuses; the
//! statuses that say "not done" release the key as a 5xx does (rule 7).

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use idem::{IdempotencyLayer, MemoryStore};
use idem_testkit::faulty::Faulty;
use idem_testkit::grpc::{charge, meta, Payments};
use tonic::Code;
use tower::Layer;

fn origin() -> Uri {
    Uri::from_static("http://payments.test")
}

fn layered(payments: &Payments) -> idem::Idempotency<Payments> {
    IdempotencyLayer::new(Arc::new(MemoryStore::new())).layer(payments.clone())
}

#[tokio::test]
async fn rules_3_and_4_the_answer_and_its_trailers_are_replayed() {
    let payments = Payments::default();
    let svc = layered(&payments);
    let first = charge(
        svc.clone(),
        origin(),
        Some("grpc-key-000001"),
        &[],
        b"amount=5",
    )
    .await
    .expect("charged");
    assert_eq!(first.get_ref().as_ref(), b"charged 1: amount=5");
    assert_eq!(meta(first.metadata(), "x-charge"), Some("1"));
    assert!(first.metadata().get("idempotent-replayed").is_none());

    let replay = charge(
        svc.clone(),
        origin(),
        Some("grpc-key-000001"),
        &[],
        b"amount=5",
    )
    .await
    .expect("replayed");
    assert_eq!(replay.get_ref(), first.get_ref());
    assert_eq!(meta(replay.metadata(), "x-charge"), Some("1"));
    assert_eq!(meta(replay.metadata(), "idempotent-replayed"), Some("true"));
    assert_eq!(payments.runs(), 1);
}

#[tokio::test]
async fn rules_1_2_and_6_refusals_are_grpc_statuses() {
    let payments = Payments::default();
    let svc = layered(&payments);
    let missing = charge(svc.clone(), origin(), None, &[], b"amount=5")
        .await
        .expect_err("refused");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(
        missing.message().contains("Idempotency-Key"),
        "{}",
        missing.message()
    );
    let invalid = charge(svc.clone(), origin(), Some("short"), &[], b"amount=5")
        .await
        .expect_err("refused");
    assert_eq!(invalid.code(), Code::InvalidArgument);

    charge(
        svc.clone(),
        origin(),
        Some("grpc-key-000002"),
        &[],
        b"amount=5",
    )
    .await
    .expect("charged");
    let reused = charge(
        svc.clone(),
        origin(),
        Some("grpc-key-000002"),
        &[],
        b"amount=6",
    )
    .await
    .expect_err("refused");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(payments.runs(), 1);
}

#[tokio::test]
async fn rule_5_a_duplicate_in_progress_is_aborted_with_a_retry_delay() {
    let payments = Payments::default();
    let svc = layered(&payments);
    const SLOW: &[(&str, &str)] = &[("x-test-grpc-delay-ms", "300")];
    let first = tokio::spawn(charge(
        svc.clone(),
        origin(),
        Some("grpc-key-000003"),
        SLOW,
        b"amount=5",
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = charge(
        svc.clone(),
        origin(),
        Some("grpc-key-000003"),
        SLOW,
        b"amount=5",
    )
    .await
    .expect_err("in progress");
    assert_eq!(during.code(), Code::Aborted);
    assert_eq!(
        meta(during.metadata(), "grpc-retry-pushback-ms"),
        Some("1000")
    );
    first.await.expect("joined").expect("charged");
    assert_eq!(payments.runs(), 1);
}

#[tokio::test]
async fn rule_7_unavailable_deadline_and_exhausted_release_the_key() {
    let payments = Payments::default();
    let svc = layered(&payments);
    for (i, code) in [(1, "14"), (2, "4"), (3, "8")] {
        let key = format!("grpc-release-00{i}");
        let failed = charge(
            svc.clone(),
            origin(),
            Some(&key),
            &[("x-test-grpc-code", code)],
            b"a",
        )
        .await
        .expect_err("failed");
        assert_eq!(
            failed.code() as i32,
            code.parse::<i32>().unwrap_or_default()
        );
        // Released: the retry executes again, and succeeds.
        let retry = charge(svc.clone(), origin(), Some(&key), &[], b"a")
            .await
            .expect("executed again");
        assert!(retry.metadata().get("idempotent-replayed").is_none());
    }
    assert_eq!(payments.runs(), 6);

    // Any other failure is the operation's answer: stored and replayed.
    let key = Some("grpc-stored-0001");
    let not_found = [("x-test-grpc-code", "5")];
    let first = charge(svc.clone(), origin(), key, &not_found, b"a")
        .await
        .expect_err("failed");
    assert_eq!(first.code(), Code::NotFound);
    let again = charge(svc.clone(), origin(), key, &not_found, b"a")
        .await
        .expect_err("replayed");
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(again.message(), first.message());
    assert_eq!(meta(again.metadata(), "idempotent-replayed"), Some("true"));
    assert_eq!(payments.runs(), 7);
}

#[tokio::test]
async fn rule_10_a_store_that_does_not_answer_is_unavailable() {
    let payments = Payments::default();
    let svc = IdempotencyLayer::new(Arc::new(Faulty::new(MemoryStore::new()).silent()))
        .store_timeout(Duration::from_millis(50))
        .layer(payments.clone());
    let refused = charge(svc, origin(), Some("grpc-key-000004"), &[], b"a")
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(payments.runs(), 0);
}
