//! The deployment files under deploy/ agree with the binary: every flag
//! and `IDEM_*` variable they use exists, the configuration they start with
//! resolves, ports and probe paths are the ones the gateway serves, grace
//! periods outlast the drain timeout, and the container and the service run
//! as an unprivileged user.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};
use common::{client, gateway_logged, send};
use idem_gateway::cli::GatewayArgs;
use idem_gateway::gateway::config::parse_duration;
use idem_gateway::gateway::GatewayConfig;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(file: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&deploy(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn command() -> Command {
    GatewayArgs::augment_args(Command::new("gateway"))
}

/// `idem gateway ARGS` resolved as the binary would (the store is parsed,
/// not contacted).
fn resolve(args: &[&str], toml: Option<&str>) -> GatewayConfig {
    let argv = std::iter::once("gateway").chain(args.iter().copied());
    let matches = command()
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let args = GatewayArgs::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"));
    match toml {
        Some(text) => GatewayConfig::from_toml(text, &args),
        None => GatewayConfig::resolve(&args),
    }
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn port(addr: &str) -> i64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// The drain timeout `idem gateway --help` gives as its default.
fn default_drain() -> Duration {
    let help = command()
        .get_arguments()
        .find(|a| a.get_long() == Some("drain-timeout"))
        .and_then(|a| a.get_help().map(ToString::to_string))
        .expect("--drain-timeout");
    let default = help
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next())
        .expect("a default");
    parse_duration(default).expect("a duration")
}

/// Every `IDEM_*` variable the gateway reads.
fn env_names() -> Vec<String> {
    let mut names: Vec<String> = command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    // Global flags of the `idem` command itself.
    names.extend(["IDEM_LOG".to_owned(), "IDEM_LOG_FORMAT".to_owned()]);
    names
}

/// The configuration the image and the unit start with, under the upstream
/// they are given at run time.
fn packaged_config() -> GatewayConfig {
    resolve(
        &["--upstream", "http://127.0.0.1:3000"],
        Some(&deploy("idem.toml")),
    )
}

#[test]
fn the_dockerfile_runs_the_gateway_unprivileged_with_the_packaged_config() {
    let text = deploy("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let find = |word: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(word).map(str::trim))
            .collect()
    };
    assert!(
        find("FROM ").len() >= 2,
        "multi-stage: build, then a slim runtime"
    );
    assert!(text.contains("--locked"), "built from Cargo.lock");
    assert_eq!(find("ENTRYPOINT "), vec![r#"["idem", "gateway"]"#]);
    let user = find("USER ");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with("root") && !user[0].starts_with("0"),
        "{user:?}"
    );
    // The packaged config is where IDEM_CONFIG says, and resolves.
    assert!(text.contains("COPY deploy/idem.toml /etc/idem/idem.toml"));
    assert!(text.contains("IDEM_CONFIG=/etc/idem/idem.toml"));
    for var in text.split_whitespace().filter_map(|w| w.split('=').next()) {
        if var.starts_with("IDEM_") {
            assert!(
                env_names().contains(&var.to_owned()),
                "{var} is not read by idem"
            );
        }
    }
    let config = packaged_config();
    assert!(config.listen.starts_with("0.0.0.0:"), "{}", config.listen);
    let admin = config.admin_listen.clone().expect("admin listener");
    assert!(admin.starts_with("0.0.0.0:"), "{admin}");
    let exposed: Vec<i64> = find("EXPOSE ")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(|p| p.parse().expect("a port"))
        .collect();
    assert_eq!(exposed, vec![port(&config.listen), port(&admin)]);
    // The SQLite store is on the declared volume, which the user owns.
    assert!(config
        .store
        .to_string()
        .starts_with("sqlite:///var/lib/idem/"));
    assert!(text.contains(r#"VOLUME ["/var/lib/idem"]"#));
    assert!(text.contains("--home-dir /var/lib/idem"));
}

#[test]
fn the_compose_file_wires_the_gateway_to_redis_and_an_upstream() {
    let docs = yaml("docker-compose.yml");
    let services = &docs[0]["services"];
    let gw = &services["gateway"];
    assert_eq!(
        gw["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    let env: HashMap<String, String> = gw["environment"]
        .as_hash()
        .expect("environment")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap_or_default().to_owned(),
                v.as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for var in env.keys() {
        assert!(env_names().contains(var), "{var} is not read by idem");
    }
    let store = &env["IDEM_STORE"];
    let host = store
        .trim_start_matches("redis://")
        .split(':')
        .next()
        .unwrap_or_default();
    assert!(
        services[host].as_hash().is_some(),
        "the store's host {host} is a service"
    );
    let redis_cmd: Vec<&str> = services[host]["command"]
        .as_vec()
        .expect("redis command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(redis_cmd
        .windows(2)
        .any(|w| w == ["--maxmemory-policy", "noeviction"]));
    let upstream = &env["IDEM_UPSTREAM"];
    let up_host = upstream
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or_default();
    assert!(
        services[up_host].as_hash().is_some(),
        "the upstream {up_host} is a service"
    );
    // The published ports are the packaged config's.
    let config = resolve(
        &["--upstream", upstream, "--store", store],
        Some(&deploy("idem.toml")),
    );
    let published: Vec<&str> = gw["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let admin = config.admin_listen.clone().expect("admin");
    for p in [port(&config.listen), port(&admin)] {
        assert!(
            published.contains(&format!("{p}:{p}").as_str()),
            "{p} not published: {published:?}"
        );
    }
    let grace = parse_duration(gw["stop_grace_period"].as_str().expect("stop_grace_period"))
        .expect("duration");
    assert!(
        grace > config.drain_timeout,
        "{grace:?} <= {:?}",
        config.drain_timeout
    );
}

#[test]
fn the_systemd_unit_is_hardened_and_keeps_state_where_the_store_is() {
    let text = deploy("systemd/idem-gateway.service");
    let settings: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "idem"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(key), vec![value], "{key}");
    }
    let exec = get("ExecStart");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(&argv[..2], ["/usr/local/bin/idem", "gateway"]);
    let config_path = argv
        .iter()
        .skip_while(|a| **a != "--config")
        .nth(1)
        .expect("--config");
    assert_eq!(*config_path, "/etc/idem/idem.toml");
    // Its flags exist, and the config it names (the packaged one) resolves.
    let flags: Vec<&str> = argv[2..]
        .iter()
        .copied()
        .filter(|a| *a != "--config" && *a != *config_path)
        .collect();
    assert!(flags.is_empty(), "unexpected flags {flags:?}");
    let config = packaged_config();
    assert!(
        config
            .store
            .to_string()
            .starts_with("sqlite:///var/lib/idem/"),
        "the store is in the StateDirectory: {}",
        config.store
    );
    assert_eq!(get("WorkingDirectory"), vec!["/var/lib/idem"]);
    let stop = parse_duration(get("TimeoutStopSec")[0]).expect("TimeoutStopSec");
    assert!(
        stop > config.drain_timeout && stop > default_drain(),
        "{stop:?}"
    );
    assert_eq!(get("KillSignal"), vec!["SIGTERM"]);
    for (var, _) in get("Environment").iter().filter_map(|e| e.split_once('=')) {
        assert!(
            env_names().contains(&var.to_owned()),
            "{var} is not read by idem"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_sidecar_probes_what_the_gateway_serves() {
    let docs = yaml("kubernetes/sidecar.yaml");
    let deployment = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let idem = pod["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("idem"))
        .expect("the idem container");
    let args: Vec<&str> = idem["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    // The flags parse and resolve as `idem gateway` would.
    let config = resolve(&args, None);
    let ports: HashMap<&str, i64> = idem["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default(),
                p["containerPort"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(ports["http"], port(&config.listen));
    let admin = config.admin_listen.clone().expect("admin listener");
    assert_eq!(ports["admin"], port(&admin));
    assert!(config.listen.starts_with("0.0.0.0:") && admin.starts_with("0.0.0.0:"));
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace period");
    assert!(
        Duration::from_secs(grace as u64) > config.drain_timeout,
        "{grace}s"
    );
    for var in idem["env"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
    {
        assert!(
            env_names().contains(&var.to_owned()),
            "{var} is not read by idem"
        );
    }
    assert_eq!(
        idem["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );

    // The probes: on the admin port, at paths the running gateway answers
    // (its store swapped for memory://, its ports for free ones).
    let admin_port = common::free_port();
    let mut run: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if matches!(*a, "--listen" | "--admin-listen" | "--store") {
            it.next();
        } else {
            run.push((*a).to_owned());
        }
    }
    let admin_addr = format!("127.0.0.1:{admin_port}");
    run.extend([
        "--store".into(),
        "memory://".into(),
        "--admin-listen".into(),
        admin_addr.clone(),
    ]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let (_gw, _base, log) = gateway_logged(&run);
    assert!(log.wait_for("admin API on").await, "{}", log.text());
    let c = client();
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &idem[probe]["httpGet"];
        let named = get["port"].as_str().expect("a named port");
        assert_eq!(ports[named], port(&admin), "{probe} is on the admin port");
        let path = get["path"].as_str().expect("path");
        let url = format!("http://{admin_addr}{path}");
        let answer = send(&c, http::Method::GET, &url, &[], "").await;
        assert_eq!(answer.status, 200, "{probe} {path}: {}", answer.text());
    }
}
