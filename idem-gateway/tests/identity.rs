//! Identity scopes through the gateway (`--scope`): a verified bearer
//! JWT's claim (`jwt:sub` with a JWKS or an HS256 secret) and a header a
//! trusted proxy sets (`header:x-user-id`); a configuration that cannot
//! verify anything is refused at start.

mod common;

use common::{client, gateway, idem_cmd, post_as, send};
use idem_testkit::jwt::{self, claims, AUDIENCE, ISSUER};
use idem_testkit::upstream::CountingUpstream;

const BODY: &str = r#"{"amount":42,"currency":"EUR"}"#;

fn write(dir: &tempfile::TempDir, name: &str, text: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_jwt_sub_refreshed_tokens_replay_and_forged_ones_get_401() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = write(&dir, "jwks.json", jwt::JWKS.as_bytes());
    let (_gw, base) = gateway(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory://",
        "--scope",
        "jwt:sub",
        "--jwt-jwks-file",
        &jwks,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]);
    let c = client();
    let url = format!("{base}/payments");
    let key = "refresh-order-0001";
    let first = post_as(
        &c,
        &url,
        &jwt::rs256(&claims("alice", 600, "t1")),
        key,
        BODY,
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text());
    // The access token was refreshed (another algorithm even) before the retry.
    let retry = post_as(
        &c,
        &url,
        &jwt::es256(&claims("alice", 900, "t2")),
        key,
        BODY,
    )
    .await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(up.executions_of(key), 1);

    // A forged token naming alice: 401, never alice's answer, nothing sent upstream.
    let forged = post_as(
        &c,
        &url,
        &jwt::forged_es256(&claims("alice", 600, "f")),
        key,
        BODY,
    )
    .await;
    assert_eq!(forged.status, 401, "{}", forged.text());
    assert_eq!(forged.problem_slug(), "unauthenticated");
    assert!(forged.headers.get("www-authenticate").is_some());
    assert!(!forged.replayed());
    let expired = post_as(
        &c,
        &url,
        &jwt::rs256(&claims("alice", -3600, "e")),
        key,
        BODY,
    )
    .await;
    assert_eq!(expired.status, 401, "{}", expired.text());
    assert_eq!(up.executions_of(key), 1);
    assert_eq!(up.executions(), 1);

    // Uncovered requests pass through untouched, whatever their token.
    let get = send(
        &c,
        http::Method::GET,
        &url,
        &[("authorization", "Bearer junk")],
        "",
    )
    .await;
    assert_ne!(get.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_keys_bind_to_the_jwt_subject_through_the_gateway() {
    let up = CountingUpstream::start().await.expect("upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let hs = write(&dir, "hs256", &[jwt::HS256_SECRET, b"\n"].concat());
    let signing = write(&dir, "signing", b"signing-secret-signing-secret-00");
    let (_gw, base) = gateway(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory://",
        "--scope",
        "jwt:sub",
        "--jwt-hs256-secret-file",
        &hs,
        "--require-signed-keys",
        "--key-signing-secret-file",
        &signing,
    ]);
    // The key is signed for the subject, as `idem keys sign` issues it.
    let out = idem_cmd(&[
        "keys",
        "sign",
        "order-0002-abcdef",
        "--scope",
        "alice",
        "--key-signing-secret-file",
        &signing,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let c = client();
    let url = format!("{base}/payments");
    let a = post_as(
        &c,
        &url,
        &jwt::hs256(&claims("alice", 600, "1")),
        &signed,
        BODY,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let b = post_as(
        &c,
        &url,
        &jwt::hs256(&claims("alice", 600, "2")),
        &signed,
        BODY,
    )
    .await;
    assert!(b.replayed(), "{}", b.text());
    let bob = post_as(
        &c,
        &url,
        &jwt::hs256(&claims("bob", 600, "3")),
        &signed,
        BODY,
    )
    .await;
    assert_eq!(bob.status, 400, "{}", bob.text());
    assert_eq!(bob.problem_slug(), "idempotency-key-invalid");
    assert_eq!(up.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_header_from_a_trusted_proxy() {
    let up = CountingUpstream::start().await.expect("upstream");
    let (_gw, base) = gateway(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory://",
        "--scope",
        "header:X-User-Id",
    ]);
    let c = client();
    let url = format!("{base}/payments");
    let call = |user: &'static str, token: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let h = [
                ("x-user-id", user),
                ("authorization", token),
                ("idempotency-key", "proxy-order-0001"),
                ("content-type", "application/json"),
            ];
            send(&c, http::Method::POST, &url, &h, BODY).await
        }
    };
    let a = call("42", "Bearer one").await;
    let b = call("42", "Bearer two").await;
    let other = call("43", "Bearer one").await;
    assert_eq!(
        (a.replayed(), b.replayed(), other.replayed()),
        (false, true, false)
    );
    assert_eq!(up.executions(), 2);
}

#[test]
fn a_scope_that_cannot_verify_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = write(&dir, "short", b"too short");
    let bad_jwks = write(&dir, "jwks.json", b"{\"keys\": 3}");
    for (args, says) in [
        (vec!["--scope", "jwt:sub"], "jwt_jwks_file"),
        (
            vec!["--scope", "jwt:sub", "--jwt-hs256-secret-file", &short],
            "at least 32",
        ),
        (
            vec!["--scope", "jwt:sub", "--jwt-jwks-file", &bad_jwks],
            "JSON Web Key Set",
        ),
        (
            vec!["--scope", "jwt:sub", "--jwt-jwks-file", "/nonexistent/jwks"],
            "cannot read",
        ),
        (vec!["--scope", "cookie:session"], "is not a scope source"),
        (vec!["--jwt-audience", "payments"], "verifies no token"),
        (
            vec!["--scope", "none", "--scope-header", "x-user"],
            "both set",
        ),
    ] {
        let mut argv = vec!["gateway", "--upstream", "http://127.0.0.1:1", "--check"];
        argv.extend(args.iter().copied());
        let out = idem_cmd(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {err}");
        assert!(err.contains(says), "{argv:?}: {err}");
    }
}
