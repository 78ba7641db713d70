//! `idem conformance` against servers that hold the contract (`idem demo`,
//! `idem gateway` on each store) and against small servers with one flaw
//! each (`idem_testkit::broken`): every check passes on the first, and each
//! flaw is caught by the check meant for it and by no other.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{demo, gateway};
use idem_gateway::conformance::{run, ConformanceArgs, Format, Verdict};
use idem_testkit::broken::{BrokenServer, Flaw};
use idem_testkit::upstream::CountingUpstream;

/// Two credentials, so that the scope check runs.
fn args(target: &str) -> ConformanceArgs {
    ConformanceArgs {
        target: target.to_owned(),
        headers: vec![
            "Authorization: Bearer conformance-alice-0001".into(),
            "Authorization: Bearer conformance-bob-0002".into(),
        ],
        fail_header: Some("X-Test-Fail: 1".into()),
        concurrency: 16,
        rounds: 3,
        ..ConformanceArgs::default()
    }
}

/// The ids of the checks that did not pass, with their report.
async fn not_passed(args: &ConformanceArgs) -> (BTreeSet<&'static str>, String) {
    let report = run(args).await.expect("conformance run");
    let text = report.text();
    let ids = report
        .outcomes
        .iter()
        .filter(|o| o.verdict != Verdict::Pass)
        .map(|o| o.check.id)
        .collect();
    (ids, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_against_idem_demo() {
    let (_demo, url) = demo(&["--store", "memory://"]);
    // The demo has no way to make a payment fail on demand: that check
    // does not apply, and says so.
    let report = run(&ConformanceArgs {
        fail_header: None,
        ..args(&url)
    })
    .await
    .expect("conformance run");
    for o in &report.outcomes {
        let expected = if o.check.id == "failure-not-stored" {
            Verdict::NotApplicable
        } else {
            Verdict::Pass
        };
        assert_eq!(o.verdict, expected, "{}", report.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_against_the_gateway_on_each_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite://{}", dir.path().join("c.db").display());
    let mut stores = vec!["memory://".to_owned(), sqlite];
    stores.extend(common::redis_db("REDIS_URL", 6));
    stores.extend(idem_testkit::server_url("DATABASE_URL"));
    for store in stores {
        let up = CountingUpstream::start().await.expect("upstream");
        let (_gw, url) = gateway(&["--upstream", &up.url(), "--store", &store]);
        // The counting upstream fails on demand.
        let (failed, report) = not_passed(&ConformanceArgs {
            fail_header: Some("X-Test-Status: 500".into()),
            ..args(&url)
        })
        .await;
        assert!(failed.is_empty(), "{store}:\n{report}");
        assert!(report.contains("10 checks: 10 passed"), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_flaw_is_caught_by_its_check_and_no_other() {
    let cases = [
        (Flaw::None, vec![]),
        (Flaw::Race, vec!["concurrent-duplicates"]),
        (Flaw::IgnoresPayload, vec!["payload-mismatch"]),
        (Flaw::NoMarker, vec!["replay-marked"]),
        (Flaw::SharedAcrossCredentials, vec!["scoped-keys"]),
        (Flaw::Caches5xx, vec!["failure-not-stored"]),
    ];
    for (flaw, expected) in cases {
        let server = BrokenServer::start(flaw).await.expect("server");
        let report = run(&args(&server.url())).await.expect("run");
        let failed: BTreeSet<&str> = report
            .outcomes
            .iter()
            .filter(|o| o.verdict == Verdict::Fail)
            .map(|o| o.check.id)
            .collect();
        let expected: BTreeSet<&str> = expected.into_iter().collect();
        assert_eq!(failed, expected, "{flaw:?}:\n{}", report.text());
        // Nothing else was left undecided.
        assert!(
            report
                .outcomes
                .iter()
                .all(|o| o.verdict == Verdict::Pass || o.verdict == Verdict::Fail),
            "{flaw:?}:\n{}",
            report.text()
        );
        assert_eq!(report.failed(), flaw != Flaw::None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_check_says_how_often_it_tried_and_stays_in_its_budget() {
    let server = BrokenServer::start(Flaw::None).await.expect("server");
    let report = run(&ConformanceArgs {
        rounds: 4,
        concurrency: 8,
        only: vec!["concurrent-duplicates".into()],
        ..args(&server.url())
    })
    .await
    .expect("run");
    assert_eq!(report.outcomes.len(), 1);
    assert_eq!(report.outcomes[0].tries, Some(4));
    assert_eq!(report.requests, 32);
    // Past the budget, the checks cannot tell; they never pass.
    let report = run(&ConformanceArgs {
        max_requests: 5,
        ..args(&server.url())
    })
    .await
    .expect("run");
    assert!(report.requests <= 5);
    let race = report
        .outcomes
        .iter()
        .find(|o| o.check.id == "concurrent-duplicates")
        .expect("race check");
    assert_eq!(race.verdict, Verdict::CouldNotTell, "{}", report.text());
    assert!(
        report.text().contains("--max-requests"),
        "{}",
        report.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junit_output_parses_and_the_exit_status_says_whether_a_check_failed() {
    let flawed = BrokenServer::start(Flaw::NoMarker).await.expect("server");
    let sound = BrokenServer::start(Flaw::None).await.expect("server");
    let conformance = |url: &str, format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_idem"))
            .args(["conformance", "--target", url, "--format", format])
            .args(["--concurrency", "8", "--rounds", "2"])
            .output()
            .expect("idem conformance");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, xml, stderr) = conformance(&flawed.url(), "junit");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("real operations"), "{stderr}");
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .expect("testsuite");
    assert_eq!(suite.attribute("tests"), Some("10"));
    assert_eq!(suite.attribute("failures"), Some("1"));
    let failing: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
        .filter_map(|c| c.attribute("name"))
        .collect();
    assert_eq!(failing, ["replay-marked"]);
    // One credential and no failure trigger: those two checks do not
    // apply, and say how to run them.
    let skipped = doc
        .descendants()
        .filter(|n| n.has_tag_name("skipped"))
        .count();
    assert_eq!(skipped, 2, "{xml}");

    let (code, text, _) = conformance(&sound.url(), "text");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("8 passed, 0 failed, 2 not applicable"),
        "{text}"
    );
    let (code, json, _) = conformance(&sound.url(), "json");
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["passed"], true);
    assert_eq!(v["checks"].as_array().map(Vec::len), Some(10));
    let _ = Format::Junit;
}
