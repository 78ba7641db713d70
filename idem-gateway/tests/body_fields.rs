//! `fingerprint_include` and `fingerprint_exclude` through `idem gateway`:
//! route settings from the config file, and `--check` shows them.

mod common;

use common::{client, gateway, idem_cmd, post};
use idem_testkit::upstream::CountingUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_6_over_the_fields_a_route_names() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("idem.toml");
    std::fs::write(
        &config,
        format!(
            "upstream = \"{}\"\nstore = \"memory://\"\n\n[[routes]]\npath = \"/payments\"\nfingerprint_exclude = [\"/client_timestamp\"]\n\n[[routes]]\npath = \"/transfers\"\nfingerprint_include = [\"/amount\", \"/currency\", \"/recipient\"]\n",
            up.url()
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf8");
    let check = idem_cmd(&["gateway", "--config", config, "--check"]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        shown.contains("fingerprint_exclude = [\"/client_timestamp\"]"),
        "{shown}"
    );
    assert!(
        shown.contains("fingerprint_include = [\"/amount\", \"/currency\", \"/recipient\"]"),
        "{shown}"
    );

    let (_gw, url) = gateway(&["--config", config]);
    let c = client();
    let pay = format!("{url}/payments");
    let first = post(
        &c,
        &pay,
        Some("gw-fields-0001"),
        r#"{"amount": 10, "client_timestamp": 1}"#,
    )
    .await;
    assert_eq!(first.status, 201);
    let retry = post(
        &c,
        &pay,
        Some("gw-fields-0001"),
        r#"{"amount": 10, "client_timestamp": 2}"#,
    )
    .await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    let changed = post(
        &c,
        &pay,
        Some("gw-fields-0001"),
        r#"{"amount": 12, "client_timestamp": 2}"#,
    )
    .await;
    assert_eq!(changed.status, 422);

    let transfer = format!("{url}/transfers");
    let body = r#"{"amount": 5, "currency": "EUR", "recipient": "acct_1", "memo": "rent"}"#;
    assert_eq!(
        post(&c, &transfer, Some("gw-fields-0002"), body)
            .await
            .status,
        201
    );
    let memo = r#"{"amount": 5, "currency": "EUR", "recipient": "acct_1", "memo": "March rent"}"#;
    assert!(post(&c, &transfer, Some("gw-fields-0002"), memo)
        .await
        .replayed());
    let recipient = r#"{"amount": 5, "currency": "EUR", "recipient": "acct_2", "memo": "rent"}"#;
    assert_eq!(
        post(&c, &transfer, Some("gw-fields-0002"), recipient)
            .await
            .status,
        422
    );
    assert_eq!(up.executions(), 2);

    // Both on one route, or something that is not a pointer: refused, named.
    std::fs::write(
        dir.path().join("bad.toml"),
        "upstream = \"http://127.0.0.1:1\"\n[[routes]]\npath = \"/x\"\nfingerprint_include = [\"amount\"]\n",
    )
    .expect("config");
    let bad = idem_cmd(&[
        "gateway",
        "--config",
        dir.path().join("bad.toml").to_str().expect("utf8"),
        "--check",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("routes[0].fingerprint_include") && err.contains("JSON pointer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_body_through_the_gateway() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("idem.toml");
    std::fs::write(
        &config,
        format!(
            "upstream = \"{}\"\nstore = \"memory://\"\n\n[[routes]]\npath = \"/orders\"\nkey_from = \"json:/idempotency_key\"\n\n[[routes]]\npath = \"/hooks/stripe\"\nwebhook = true\nwebhook_key_json = \"/id\"\n",
            up.url()
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf8");
    let check = idem_cmd(&["gateway", "--config", config, "--check"]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        shown.contains("key_from = \"json:/idempotency_key\""),
        "{shown}"
    );

    let (_gw, url) = gateway(&["--config", config]);
    let c = client();
    let orders = format!("{url}/orders");
    let body = r#"{"idempotency_key": "gw-body-key-0001", "amount": 5}"#;
    let first = post(&c, &orders, None, body).await;
    assert_eq!(first.status, 201);
    let again = post(&c, &orders, None, body).await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(
        post(&c, &orders, None, r#"{"amount": 5}"#).await.status,
        400
    );

    let hooks = format!("{url}/hooks/stripe");
    let event = r#"{"id": "evt_gw_0001", "type": "charge.succeeded"}"#;
    assert_eq!(post(&c, &hooks, None, event).await.status, 201);
    assert!(post(&c, &hooks, None, event).await.replayed());
    assert_eq!(up.executions(), 2);

    std::fs::write(
        dir.path().join("bad.toml"),
        "upstream = \"http://127.0.0.1:1\"\n[[routes]]\npath = \"/x\"\nkey_from = \"body\"\n",
    )
    .expect("config");
    let bad = idem_cmd(&[
        "gateway",
        "--config",
        dir.path().join("bad.toml").to_str().expect("utf8"),
        "--check",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("routes[0].key_from"), "{err}");
}
