use std::time::Duration;

use http::HeaderName;

use super::*;

fn resolve_text(text: &str, args: GatewayArgs) -> anyhow::Result<GatewayConfig> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("idem.toml");
    std::fs::write(&path, text)?;
    GatewayConfig::resolve(&GatewayArgs {
        config: Some(path),
        ..args
    })
}

#[test]
fn routes_inherit_the_top_level_and_flags_override_it() -> anyhow::Result<()> {
    let text = r#"
        upstream = "http://127.0.0.1:3000/api/"
        ttl = "1h"
        max_body = "64KiB"

        [[routes]]
        path = "/payments/**"
        ttl = "24h"

        [[routes]]
        path = "/webhooks/**"
        webhook = true
        webhook_headers = ["X-Delivery"]
    "#;
    let c = resolve_text(
        text,
        GatewayArgs {
            ttl: Some("7d".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(c.upstream.prefix, "/api");
    assert_eq!(c.policy.default.ttl, Duration::from_secs(7 * 86_400));
    assert_eq!(c.policy.default.max_request_body, 64 << 10);
    assert_eq!(c.policy.routes[0].1.ttl, Duration::from_secs(86_400));
    assert_eq!(c.policy.routes[0].1.max_request_body, 64 << 10);
    let webhook = c.policy.routes[1]
        .1
        .webhook
        .as_ref()
        .expect("webhook route");
    assert_eq!(webhook.headers, vec![HeaderName::from_static("x-delivery")]);
    Ok(())
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("upstream = \"http://a:1\"\nttll = 3\n", "ttll"),
        (
            "upstream = \"http://a:1\"\n[[routes]]\npath = \"/x\"\nfingerprint = \"sha\"\n",
            "routes[0].fingerprint",
        ),
        (
            "upstream = \"http://a:1\"\n[[routes]]\npath = \"x\"\n",
            "routes[0].path",
        ),
        (
            "upstream = \"http://a:1\"\nlock_timeout = \"forever\"\n",
            "lock_timeout",
        ),
        (
            "upstream = \"http://a:1\"\n[[routes]]\npath = \"/x\"\nstream = \"sometimes\"\n",
            "routes[0].stream",
        ),
        (
            "upstream = \"http://a:1\"\nno_store = [\"6xx\"]\n",
            "no_store",
        ),
        ("upstream = \"ftp://a:1\"\n", "upstream"),
        (
            "upstream = \"http://a:1\"\nstore = \"mongodb://x\"\n",
            "store",
        ),
        (
            "upstream = \"http://a:1\"\n[[routes]]\npath = \"/x\"\nmethods = [\"PO ST\"]\n",
            "routes[0].methods",
        ),
        (
            "upstream = \"http://a:1\"\nmemory_max_bytes = \"64KiB\"\n",
            "memory_max_bytes",
        ),
        (
            "upstream = \"http://a:1\"\nmemory_max_bytes = \"lots\"\n",
            "memory_max_bytes",
        ),
    ];
    for (text, key) in cases {
        let err = match resolve_text(text, GatewayArgs::default()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[test]
fn the_runtime_comes_from_the_flag_or_the_file_and_bad_names_are_refused() -> anyhow::Result<()> {
    let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
    assert_eq!(c.runtime, Runtime::PerCore);
    assert!(
        c.summary().contains("runtime = \"per-core\""),
        "{}",
        c.summary()
    );
    let c = resolve_text(
        "upstream = \"http://a:1\"\nruntime = \"shared\"\n",
        GatewayArgs::default(),
    )?;
    assert_eq!(c.runtime, Runtime::Shared);
    let c = resolve_text(
        "upstream = \"http://a:1\"\nruntime = \"shared\"\n",
        GatewayArgs {
            runtime: Some("per-core".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(c.runtime, Runtime::PerCore);
    for (text, flag) in [("runtime = \"percore\"\n", None), ("", Some("threads"))] {
        let err = resolve_text(
            &format!("upstream = \"http://a:1\"\n{text}"),
            GatewayArgs {
                runtime: flag.map(Into::into),
                ..Default::default()
            },
        )
        .map_err(|e| format!("{e:#}"));
        assert!(
            matches!(&err, Err(e) if e.contains("runtime") && e.contains("per-core")),
            "{err:?}"
        );
    }
    Ok(())
}

#[test]
fn h2_max_streams_comes_from_the_flag_or_the_file_and_defaults_to_100() -> anyhow::Result<()> {
    let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
    assert_eq!(c.h2_max_streams, 100);
    let c = resolve_text(
        "upstream = \"http://a:1\"\nh2_max_streams = 8\n",
        GatewayArgs::default(),
    )?;
    assert_eq!(c.h2_max_streams, 8);
    assert!(
        c.summary().contains("h2_max_streams = 8"),
        "{}",
        c.summary()
    );
    let c = resolve_text(
        "upstream = \"http://a:1\"\nh2_max_streams = 8\n",
        GatewayArgs {
            h2_max_streams: Some("2".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(c.h2_max_streams, 2);
    let err = resolve_text(
        "upstream = \"http://a:1\"\nh2_max_streams = 0\n",
        GatewayArgs::default(),
    )
    .map_err(|e| format!("{e:#}"));
    assert!(
        matches!(&err, Err(e) if e.contains("h2_max_streams")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn scope_share_is_a_fraction_from_the_flag_or_the_file() -> anyhow::Result<()> {
    let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
    assert!((c.scope_share - 0.5).abs() < f64::EPSILON);
    let c = resolve_text(
        "upstream = \"http://a:1\"\nscope_share = 0.25\n",
        GatewayArgs::default(),
    )?;
    assert!((c.scope_share - 0.25).abs() < f64::EPSILON);
    let c = resolve_text(
        "upstream = \"http://a:1\"\n",
        GatewayArgs {
            scope_share: Some("1".into()),
            ..Default::default()
        },
    )?;
    assert!((c.scope_share - 1.0).abs() < f64::EPSILON);
    for bad in ["0", "1.5", "half"] {
        let err = resolve_text(
            "upstream = \"http://a:1\"\n",
            GatewayArgs {
                scope_share: Some(bad.into()),
                ..Default::default()
            },
        )
        .map_err(|e| format!("{e:#}"));
        assert!(
            matches!(&err, Err(e) if e.contains("--scope-share")),
            "{bad}: {err:?}"
        );
    }
    Ok(())
}

#[test]
fn scope_key_rate_is_off_by_default_and_its_burst_follows_it() -> anyhow::Result<()> {
    let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
    assert_eq!(c.scope_key_rate, None);
    let c = resolve_text(
        "upstream = \"http://a:1\"\nscope_key_rate = 2.5\n",
        GatewayArgs::default(),
    )?;
    assert_eq!(c.scope_key_rate, Some((2.5, 3)));
    let c = resolve_text(
        "upstream = \"http://a:1\"\n",
        GatewayArgs {
            scope_key_rate: Some("0.2".into()),
            scope_key_burst: Some("5".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(c.scope_key_rate, Some((0.2, 5)));
    for bad in ["0", "-1", "fast"] {
        let err = resolve_text(
            "upstream = \"http://a:1\"\n",
            GatewayArgs {
                scope_key_rate: Some(bad.into()),
                ..Default::default()
            },
        )
        .map_err(|e| format!("{e:#}"));
        assert!(
            matches!(&err, Err(e) if e.contains("--scope-key-rate")),
            "{bad}: {err:?}"
        );
    }
    Ok(())
}

#[test]
fn the_memory_byte_budget_comes_from_the_flag_or_the_file() -> anyhow::Result<()> {
    let c = resolve_text(
        "upstream = \"http://a:1\"\nstore = \"memory://\"\nmemory_max_bytes = \"64MiB\"\n",
        GatewayArgs::default(),
    )?;
    assert_eq!(c.memory_max_bytes, 64 << 20);
    assert!(
        c.summary().contains("memory_capacity = 1000000")
            && c.summary().contains("memory_max_bytes = 67108864"),
        "{}",
        c.summary()
    );
    let c = resolve_text(
        "upstream = \"http://a:1\"\nmemory_max_bytes = \"64MiB\"\n",
        GatewayArgs {
            memory_max_bytes: Some("2GiB".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(c.memory_max_bytes, 2 << 30);
    let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
    assert_eq!(c.memory_max_bytes, 1 << 30);
    Ok(())
}

#[test]
fn workers_come_from_the_flag_or_the_file_and_are_bounded() -> anyhow::Result<()> {
    let c = resolve_text("upstream = \"http://a:1\"\n", GatewayArgs::default())?;
    assert_eq!(c.workers, None);
    // Unset: one per core, and --check leaves the key out.
    assert!(!c.summary().contains("workers ="));
    let c = resolve_text(
        "upstream = \"http://a:1\"\nworkers = 3\n",
        GatewayArgs::default(),
    )?;
    assert_eq!(c.workers, Some(3));
    let c = resolve_text(
        "upstream = \"http://a:1\"\nworkers = 3\n",
        GatewayArgs {
            workers: Some("1".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(c.workers, Some(1));
    for (text, flag) in [("workers = 0\n", None), ("", Some("many"))] {
        let err = resolve_text(
            &format!("upstream = \"http://a:1\"\n{text}"),
            GatewayArgs {
                workers: flag.map(Into::into),
                ..Default::default()
            },
        )
        .map(|_| ())
        .map_err(|e| format!("{e:#}"));
        assert!(
            matches!(&err, Err(e) if e.contains("workers")),
            "{text:?} {flag:?}: {err:?}"
        );
    }
    Ok(())
}

#[test]
fn a_bad_flag_is_named_as_a_flag() {
    let err = GatewayConfig::resolve(&GatewayArgs {
        upstream: Some("http://127.0.0.1:1".into()),
        lock_timeout: Some("abc".into()),
        ..Default::default()
    })
    .map(|_| ())
    .map_err(|e| format!("{e:#}"));
    assert!(
        matches!(&err, Err(e) if e.starts_with("--lock-timeout")),
        "{err:?}"
    );
}

/// Defaults are written once, in `Settings::default` and `RoutePolicy`'s;
/// `--help` repeats them for users, so each `[default: X]` there is checked:
/// passing `--flag X` must resolve to the same configuration as not passing
/// it.
#[test]
fn the_defaults_in_help_texts_are_the_defaults() -> anyhow::Result<()> {
    use clap::{Args, FromArgMatches};
    // Defaults written as prose, not as a value.
    const PROSE: [&str; 7] = [
        "no limit",
        "the system's roots",
        "one per CPU core",
        "one second's worth, at least 1",
        "off",
        "PATH.secret; shared stores keep one",
        "any",
    ];
    let command = GatewayArgs::augment_args(clap::Command::new("gateway"));
    let resolve = |extra: &[&str]| -> anyhow::Result<String> {
        let mut argv = vec!["gateway", "--upstream", "http://127.0.0.1:1"];
        argv.extend_from_slice(extra);
        let matches = command.clone().try_get_matches_from(argv)?;
        let args = GatewayArgs::from_arg_matches(&matches)?;
        Ok(format!("{:?}", GatewayConfig::resolve(&args)?))
    };
    let plain = resolve(&[])?;
    let mut checked = 0;
    for arg in command.get_arguments() {
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let Some(default) = help
            .split_once("[default: ")
            .and_then(|(_, d)| d.split_once(']'))
            .map(|(d, _)| d)
        else {
            continue;
        };
        // "0, off": the value, then what it means.
        let value = default.split(", ").next().unwrap_or(default);
        if PROSE.contains(&default) || PROSE.contains(&value) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        let with = resolve(&[&flag, value]).map_err(|e| anyhow!("{flag} {value}: {e:#}"))?;
        assert_eq!(with, plain, "{flag}'s help says [default: {default}]");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} defaults checked");
    Ok(())
}

#[test]
fn a_misspelt_key_gets_the_closest_one() {
    let err = resolve_text(
        "upstream = \"http://a:1\"\nmax_in_flite = 3\n",
        GatewayArgs::default(),
    )
    .map(|_| ())
    .map_err(|e| format!("{e:#}"));
    assert!(
        matches!(&err, Err(e) if e.contains("max_in_flite") && e.contains("did you mean max_in_flight")),
        "{err:?}"
    );
}

/// Every key the gateway reads is documented in docs/config.md.
#[test]
fn every_key_is_documented() {
    let doc = include_str!("../../../../docs/config.md");
    let keys = field_names::<Settings>()
        .iter()
        .chain(field_names::<RouteSettings>())
        .chain(field_names::<RouteEntry>());
    for key in keys {
        let table = format!("[[{key}]]");
        assert!(
            doc.contains(&format!("`{key}`")) || doc.contains(&table),
            "{key} is not in docs/config.md"
        );
    }
}

/// `--check` prints the resolved configuration as TOML that `--config`
/// reads back to the same configuration.
#[test]
fn check_prints_toml_that_config_reads_back_unchanged() -> anyhow::Result<()> {
    let text = r#"
upstream = "http://127.0.0.1:3000/api"
listen = "0.0.0.0:8443"
admin_listen = "none"
store = "sqlite:///var/lib/idem/idem.db"
scope = "header:x-user-id"
ttl = "6h"
lock_timeout = "45s"
max_body = "64KiB"
wait = "750ms"
no_store = ["5xx", "409"]
fail_open = true
local_cache = 500
scope_share = 0.25
scope_key_rate = 2.5
scope_key_burst = 7
workers = 3
runtime = "shared"
postgres_statements = "prepared"
redis_key_prefix = "payments:"

[[routes]]
path = "/payments/**"
ttl = "24h"
methods = ["POST"]
fingerprint = "exact"
replay_set_cookie = "never"
unknown_outcome = "keep"
stream = "never"
echo_key = true

[[routes]]
path = "/webhooks/{provider}"
webhook = true
webhook_headers = ["Webhook-Id"]
webhook_body_hash = false
key_required = false
"#;
    let first = resolve_text(text, GatewayArgs::default())?;
    let printed = first.summary();
    let second =
        resolve_text(&printed, GatewayArgs::default()).map_err(|e| anyhow!("{e:#}\n{printed}"))?;
    assert_eq!(second.summary(), printed);
    assert_eq!(format!("{second:?}"), format!("{first:?}"));
    // What was set is what is printed.
    for line in [
        "scope = \"header:x-user-id\"",
        "wait = \"750ms\"",
        "scope_key_burst = 7",
        "postgres_statements = \"prepared\"",
        "unknown_outcome = \"keep\"",
        "stream = \"never\"",
        "echo_key = true",
        "webhook_body_hash = false",
    ] {
        assert!(printed.contains(line), "{line}\n{printed}");
    }
    // Flags are printed as the values they set.
    let flagged = GatewayConfig::from_toml(
        text,
        &GatewayArgs {
            ttl: Some("90m".into()),
            ..GatewayArgs::default()
        },
    )?;
    let again = GatewayConfig::from_toml(&flagged.summary(), &GatewayArgs::default())?;
    assert_eq!(
        again.policy.default.ttl,
        std::time::Duration::from_secs(5400)
    );
    assert_eq!(format!("{again:?}"), format!("{flagged:?}"));
    Ok(())
}
