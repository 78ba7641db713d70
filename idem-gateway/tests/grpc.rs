//! gRPC unary calls through `idem gateway`: a tonic client speaking h2c to
//! the gateway, the gateway speaking h2c to a tonic service. The answer and
//! its trailers are stored and replayed; refusals are gRPC statuses; a
//! released status lets the retry execute.

mod common;

use bytes::Bytes;
use common::gateway;
use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idem_testkit::grpc::{charge, meta, serve, Payments};
use tonic::Code;

type Channel = Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>;

fn h2c() -> Channel {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_calls_are_stored_replayed_and_refused_as_grpc() {
    let payments = Payments::default();
    let (addr, _server) = serve(payments.clone()).await.expect("grpc server");
    let upstream = format!("http://{addr}");
    let (_gw, url) = gateway(&["--upstream", &upstream, "--store", "memory://"]);
    let origin: Uri = url.parse().expect("gateway url");
    let c = h2c();

    let first = charge(
        c.clone(),
        origin.clone(),
        Some("gw-grpc-key-0001"),
        &[],
        b"amount=5",
    )
    .await
    .expect("charged");
    assert_eq!(first.get_ref(), &Bytes::from_static(b"charged 1: amount=5"));
    let replay = charge(
        c.clone(),
        origin.clone(),
        Some("gw-grpc-key-0001"),
        &[],
        b"amount=5",
    )
    .await
    .expect("replayed");
    assert_eq!(replay.get_ref(), first.get_ref());
    assert_eq!(meta(replay.metadata(), "idempotent-replayed"), Some("true"));
    assert_eq!(meta(replay.metadata(), "x-charge"), Some("1"));

    let reused = charge(
        c.clone(),
        origin.clone(),
        Some("gw-grpc-key-0001"),
        &[],
        b"amount=6",
    )
    .await
    .expect_err("refused");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    let missing = charge(c.clone(), origin.clone(), None, &[], b"amount=5")
        .await
        .expect_err("refused");
    assert_eq!(missing.code(), Code::InvalidArgument);

    // UNAVAILABLE from the service releases the key: the retry executes.
    let unavailable = [("x-test-grpc-code", "14")];
    let failed = charge(
        c.clone(),
        origin.clone(),
        Some("gw-grpc-key-0002"),
        &unavailable,
        b"a",
    )
    .await
    .expect_err("failed");
    assert_eq!(failed.code(), Code::Unavailable);
    charge(
        c.clone(),
        origin.clone(),
        Some("gw-grpc-key-0002"),
        &[],
        b"a",
    )
    .await
    .expect("executed again");
    assert_eq!(payments.runs(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_be_reached_is_unavailable_to_grpc_clients() {
    // A port bound but not listening: connections to it are refused, and no
    // other test's server can take it meanwhile (a port that was merely
    // free a moment ago was, once: the other test's gRPC server got it).
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = reserved.local_addr().expect("addr").port();
    let upstream = format!("http://127.0.0.1:{port}");
    let (_gw, url) = gateway(&["--upstream", &upstream, "--store", "memory://"]);
    let refused = charge(
        h2c(),
        url.parse().expect("url"),
        Some("gw-grpc-key-0003"),
        &[],
        b"a",
    )
    .await
    .expect_err("refused");
    assert_eq!(refused.code(), Code::Unavailable);
}
