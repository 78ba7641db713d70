//! The admin API against docs/admin-openapi.yaml (every status and JSON body
//! checked against the document), its bearer token, and `idem keys …` on
//! SQLite, including a purge of 1,000,000 expired records.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

use common::{client, post, send, Answer, HttpClient};
use http::Method;
use idem_gateway::cli::GatewayArgs;
use idem_gateway::gateway::{run, GatewayConfig};
use idem_testkit::upstream::CountingUpstream;
use serde_json::Value;
use tokio::net::TcpListener;
use yaml_rust2::{Yaml, YamlLoader};

const BODY: &str = r#"{"amount": 10}"#;
const TOKEN: &str = "test-admin-token-0123456789abcdef";

struct Spec {
    doc: Yaml,
    hit: BTreeSet<(String, String)>,
}

impl Spec {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-openapi.yaml");
        let text = std::fs::read_to_string(path).expect("docs/admin-openapi.yaml");
        let mut docs = YamlLoader::load_from_str(&text).expect("valid YAML");
        Self {
            doc: docs.remove(0),
            hit: BTreeSet::new(),
        }
    }

    /// Follows a local `$ref`.
    fn resolve<'a>(&'a self, y: &'a Yaml) -> &'a Yaml {
        match y["$ref"].as_str() {
            Some(r) => {
                let mut cur = &self.doc;
                for part in r.trim_start_matches("#/").split('/') {
                    cur = &cur[part];
                }
                self.resolve(cur)
            }
            None => y,
        }
    }

    fn check_value(&self, schema: &Yaml, v: &Value, at: &str) {
        let schema = self.resolve(schema);
        let ty = schema["type"].as_str().unwrap_or("");
        let ok = match ty {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
        assert!(ok, "{at}: {v} is not of type {ty}");
        if let Some(options) = schema["enum"].as_vec() {
            let allowed: Vec<&str> = options.iter().filter_map(Yaml::as_str).collect();
            assert!(
                allowed.contains(&v.as_str().unwrap_or("")),
                "{at}: {v} not in {allowed:?}"
            );
        }
        if ty == "object" {
            for req in schema["required"].as_vec().into_iter().flatten() {
                let name = req.as_str().expect("required names");
                assert!(
                    v.get(name).is_some(),
                    "{at}: required field {name} missing in {v}"
                );
            }
            if let Some(props) = schema["properties"].as_hash() {
                for (name, prop) in props {
                    let name = name.as_str().expect("property name");
                    if let Some(field) = v.get(name) {
                        self.check_value(prop, field, &format!("{at}.{name}"));
                    }
                }
                // Nothing undocumented.
                for key in v.as_object().into_iter().flat_map(|o| o.keys()) {
                    assert!(
                        props.contains_key(&Yaml::String(key.clone())),
                        "{at}: field {key} is not documented"
                    );
                }
            }
        }
        if ty == "array" {
            for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                self.check_value(&schema["items"], item, &format!("{at}[{i}]"));
            }
        }
    }

    /// Checks an answer to `method` on the documented `path`.
    fn check(&mut self, method: &str, path: &str, a: &Answer) {
        let op = &self.doc["paths"][path][method];
        assert!(!op.is_badvalue(), "{method} {path} is not documented");
        let status = a.status.as_str().to_owned();
        let res = self.resolve(&op["responses"][status.as_str()]);
        assert!(
            !res.is_badvalue(),
            "{method} {path} answered {status}, which is not documented"
        );
        let ctype = a
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let json = ["application/json", "application/problem+json"]
            .into_iter()
            .find(|t| ctype.starts_with(t));
        if let Some(json) = json {
            let schema = &res["content"][json]["schema"];
            assert!(
                !schema.is_badvalue(),
                "{method} {path} {status}: JSON is not documented"
            );
            let v: Value = serde_json::from_slice(&a.body).expect("JSON body");
            self.check_value(schema, &v, &format!("{method} {path} {status}"));
        } else {
            assert!(
                !res["content"]["text/plain"].is_badvalue(),
                "{method} {path} {status}: {ctype} is not documented"
            );
        }
        self.hit.insert((method.to_owned(), path.to_owned()));
    }

    fn documented(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, ops) in self.doc["paths"].as_hash().expect("paths") {
            for (method, _) in ops.as_hash().expect("operations") {
                let method = method.as_str().expect("method");
                if method != "parameters" {
                    all.insert((method.to_owned(), path.as_str().expect("path").to_owned()));
                }
            }
        }
        all
    }
}

async fn start(
    upstream: &str,
    store: &str,
    token_file: Option<std::path::PathBuf>,
) -> (String, String) {
    let config = GatewayConfig::resolve(&GatewayArgs {
        upstream: Some(upstream.to_owned()),
        store: Some(store.to_owned()),
        admin_token_file: token_file,
        ..GatewayArgs::default()
    })
    .expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let urls = (
        format!("http://{}", listener.local_addr().expect("addr")),
        format!("http://{}", admin.local_addr().expect("addr")),
    );
    tokio::spawn(run(listener, Some(admin), config, std::future::pending()));
    urls
}

async fn admin_call(c: &HttpClient, method: Method, url: &str, token: Option<&str>) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    send(c, method, url, &headers, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_matches_its_openapi_document_and_needs_the_token() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let store = format!("sqlite://{}", dir.path().join("idem.db").display());
    let (gw, admin) = start(&up.url(), &store, Some(token_file)).await;
    let c = client();
    let mut spec = Spec::load();

    // A record in alice's scope.
    let key = "admin-key-000001";
    let r = send(
        &c,
        Method::POST,
        &format!("{gw}/payments"),
        &[("idempotency-key", key), ("authorization", "Bearer alice")],
        BODY,
    )
    .await;
    assert_eq!(r.status, 201);
    let record = format!("{admin}/admin/keys/{key}?scope=Bearer%20alice");
    let doc_path = "/admin/keys/{key}";

    // No token, a wrong token: 401, and nothing is revealed or changed.
    for token in [None, Some("wrong-token-0000000000000000000")] {
        let a = admin_call(&c, Method::GET, &record, token).await;
        assert_eq!(a.status, 401);
        assert!(a.headers.contains_key("www-authenticate"));
        spec.check("get", doc_path, &a);
        let a = admin_call(&c, Method::DELETE, &record, token).await;
        assert_eq!(a.status, 401);
        spec.check("delete", doc_path, &a);
        let a = admin_call(
            &c,
            Method::POST,
            &format!("{admin}/admin/purge-expired"),
            token,
        )
        .await;
        assert_eq!(a.status, 401);
        spec.check("post", "/admin/purge-expired", &a);
        let a = admin_call(&c, Method::GET, &format!("{admin}/admin/stats"), token).await;
        assert_eq!(a.status, 401);
        spec.check("get", "/admin/stats", &a);
    }
    assert!(
        post(&c, &format!("{gw}/payments"), Some(key), BODY)
            .await
            .status
            == 201
    );

    let t = Some(TOKEN);
    let a = admin_call(&c, Method::GET, &record, t).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["state"], "completed");
    assert_eq!(a.json()["status"], 201);
    spec.check("get", doc_path, &a);
    // Another scope's view of the same key is another record.
    let a = admin_call(
        &c,
        Method::GET,
        &format!("{admin}/admin/keys/{key}?scope=Bearer%20bob"),
        t,
    )
    .await;
    assert_eq!(a.status, 404);
    spec.check("get", doc_path, &a);
    let a = admin_call(&c, Method::GET, &format!("{admin}/admin/keys/bad%20key"), t).await;
    assert_eq!(a.status, 400);
    spec.check("get", doc_path, &a);

    let a = admin_call(&c, Method::GET, &format!("{admin}/admin/stats"), t).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["completed"], 2);
    spec.check("get", "/admin/stats", &a);

    let a = admin_call(&c, Method::DELETE, &record, t).await;
    assert_eq!(a.status, 200);
    spec.check("delete", doc_path, &a);
    let a = admin_call(&c, Method::DELETE, &record, t).await;
    assert_eq!(a.status, 404);
    spec.check("delete", doc_path, &a);
    // Deleted: the next request with that key executes again.
    let again = send(
        &c,
        Method::POST,
        &format!("{gw}/payments"),
        &[("idempotency-key", key), ("authorization", "Bearer alice")],
        BODY,
    )
    .await;
    assert!(!again.replayed());
    assert_eq!(up.executions_of(key), 3);

    let a = admin_call(&c, Method::POST, &format!("{admin}/admin/purge-expired"), t).await;
    assert_eq!(a.status, 200);
    spec.check("post", "/admin/purge-expired", &a);

    for path in ["/healthz", "/readyz", "/metrics"] {
        let a = admin_call(&c, Method::GET, &format!("{admin}{path}"), None).await;
        assert_eq!(a.status, 200);
        spec.check("get", path, &a);
    }
    assert_eq!(
        spec.hit,
        spec.documented(),
        "every documented operation is exercised"
    );

    // Without --admin-token-file the API is off.
    let (_gw, admin) = start(&up.url(), "memory://", None).await;
    let a = admin_call(&c, Method::GET, &format!("{admin}/admin/stats"), t).await;
    assert_eq!(a.status, 403);
    spec.check("get", "/admin/stats", &a);
}

fn idem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cli_inspects_deletes_counts_and_purges_a_million_expired_records() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("idem.db");
    let store = format!("sqlite://{}", db.display());
    let (gw, _admin) = start(&up.url(), &store, None).await;
    let c = client();
    for i in 0..3 {
        let key = format!("live-key-{i:07}");
        assert_eq!(
            send(
                &c,
                Method::POST,
                &format!("{gw}/payments"),
                &[("idempotency-key", &key), ("authorization", "Bearer alice")],
                BODY
            )
            .await
            .status,
            201
        );
    }

    // 1,000,000 expired records, written straight into the table.
    let started = Instant::now();
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy timeout");
        conn.execute_batch(
            "BEGIN;
             WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000)
             INSERT INTO idem_records (key, fingerprint, state, fence, expires_at, response)
             SELECT randomblob(32), zeroblob(32), 1, 0, 1000, NULL FROM n;
             COMMIT;",
        )
        .expect("insert expired records");
    }
    eprintln!("wrote 1,000,000 expired records in {:?}", started.elapsed());

    let out = idem(&["keys", "--store", &store, "stats", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let stats: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(stats["completed"], 3);
    assert_eq!(stats["expired"], 1_000_000);

    let started = Instant::now();
    let out = idem(&["keys", "--store", &store, "purge-expired"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("purged 1000000 expired records"),
        "{stdout}"
    );
    // Off a terminal: what it will remove first, then plain lines.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("purging 1000000 expired records"),
        "{stderr}"
    );
    for line in stderr.lines().filter(|l| l.starts_with("purged ")) {
        assert!(line.contains(" of 1000000 expired records ("), "{line}");
        assert!(line.contains("/s, ") && line.contains("left)"), "{line}");
    }
    eprintln!("idem keys purge-expired removed 1,000,000 records in {took:?}");

    let out = idem(&["keys", "--store", &store, "stats", "--json"]);
    let stats: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (stats["completed"].as_u64(), stats["expired"].as_u64()),
        (Some(3), Some(0))
    );

    // The live records are untouched: inspect them, and they still replay.
    let out = idem(&[
        "keys",
        "--store",
        &store,
        "inspect",
        "live-key-0000001",
        "--scope",
        "Bearer alice",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state        completed") && text.contains("status       201"),
        "{text}"
    );
    let out = idem(&["keys", "--store", &store, "inspect", "live-key-0000001"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the anonymous scope has no such record"
    );
    for i in 0..3 {
        let key = format!("live-key-{i:07}");
        let r = send(
            &c,
            Method::POST,
            &format!("{gw}/payments"),
            &[("idempotency-key", &key), ("authorization", "Bearer alice")],
            BODY,
        )
        .await;
        assert!(r.replayed(), "{key}");
    }

    let out = idem(&[
        "keys",
        "--store",
        &store,
        "delete",
        "live-key-0000002",
        "--scope",
        "Bearer alice",
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = send(
        &c,
        Method::POST,
        &format!("{gw}/payments"),
        &[
            ("idempotency-key", "live-key-0000002"),
            ("authorization", "Bearer alice"),
        ],
        BODY,
    )
    .await;
    assert!(!r.replayed(), "deleted, so it executes again");
    assert_eq!(up.executions(), 4);

    let out = idem(&["keys", "--store", "memory://", "stats"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin API"));
}
