//! Run with `cargo run -p example-client-retry`.
//!
//! Starts the payments demo (in memory) behind a link that loses the first
//! two answers on their way back, then pays once with `idem-client`: the
//! first two tries reach the server (the first one charges) but their
//! answers are lost; the third try, with the same key, gets the stored
//! answer. One payment exists.

use std::time::Duration;

use idem_client::{Client, RetryPolicy};
use idem_demo::{run, DemoConfig};
use idem_stores::StoreUrl;
use idem_testkit::net::LossyLink;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let demo = listener.local_addr()?;
    let config = DemoConfig {
        store: StoreUrl::Memory,
        ..DemoConfig::default()
    };
    tokio::spawn(run(listener, config, std::future::pending()));
    let link = LossyLink::start(demo, 2).await?;
    println!(
        "demo on http://{demo}; a lossy link in front of it on {}",
        link.url()
    );

    let client = Client::new().retry_policy(RetryPolicy {
        deadline: Duration::from_secs(10),
        ..RetryPolicy::default()
    });
    let answer = client
        .post(format!("{}/payments", link.url()))
        .json(&serde_json::json!({"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}))
        .send()
        .await?;
    println!(
        "key {}: {} after {} attempts ({} answers lost), replayed: {}",
        answer.key,
        answer.status,
        answer.attempts,
        link.dropped(),
        answer.replayed
    );
    println!("payment: {}", String::from_utf8_lossy(&answer.body));

    // A GET is not covered by the layer; the client sends it once.
    let list = client
        .request(http::Method::GET, format!("http://{demo}/payments"))
        .send()
        .await?;
    let list: serde_json::Value = list.json()?;
    println!("payments on the server: {}", list["count"]);
    anyhow::ensure!(list["count"] == 1, "expected exactly one payment");
    Ok(())
}
