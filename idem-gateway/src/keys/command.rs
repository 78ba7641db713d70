//! `idem keys …`: what each action prints (text, or JSON with `--json`)
//! and its exit status. The operations themselves are [`KeyAdmin`]'s.

use anyhow::Context;

use super::KeyAdmin;
use crate::cli::{KeysAction, KeysArgs};

/// Runs `idem keys …` and prints its outcome (text, or JSON with `--json`);
/// exits 1 when there was nothing to act on (no such record, an invalid
/// signature).
pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    match &args.action {
        KeysAction::Sign {
            key,
            scope,
            signing_secret_file,
        } => {
            let secret = read_signing_secret(signing_secret_file)?;
            let key = key.clone().unwrap_or_else(idem_core::key::generate_uuid_v4);
            idem_core::KeyRules::new(1, 8192)
                .validate(&key)
                .with_context(|| format!("{key:?} cannot be signed"))?;
            println!(
                "{}",
                idem_core::signed::sign(&secret, &key, scope.as_bytes())
            );
            return Ok(());
        }
        KeysAction::Verify {
            signed,
            scope,
            signing_secret_file,
        } => {
            let secret = read_signing_secret(signing_secret_file)?;
            match idem_core::signed::verify(&secret, signed, scope.as_bytes()) {
                Ok(key) => {
                    println!("valid: key {key} signed for this scope");
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("invalid: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {}
    }
    let options = crate::stores::StoreOptions {
        redis_key_prefix: args.redis_key_prefix.clone(),
        postgres_schema: args.postgres_schema.clone(),
        ca_file: args.store_ca_file.clone(),
        // A store that may evict is still worth inspecting.
        redis_allow_eviction: true,
        ..Default::default()
    };
    let admin = KeyAdmin::open_with(&args.store, args.secret_file.as_deref(), &options)?;
    let json = args.json;
    let print = |v: serde_json::Value, text: String| {
        if json {
            println!("{v}");
        } else {
            print!("{text}");
        }
    };
    match args.action {
        KeysAction::Inspect { key, scope } => match admin.inspect(&key, scope.as_deref()).await? {
            Some(view) => print(serde_json::to_value(&view)?, view.to_string()),
            None => {
                print(
                    serde_json::Value::Null,
                    format!(
                        "no live record for {key:?}{}\n",
                        if scope.is_some() {
                            " in that scope"
                        } else {
                            " in the anonymous scope (pass --scope if the client sent one)"
                        }
                    ),
                );
                std::process::exit(1);
            }
        },
        KeysAction::Delete { key, scope } => {
            let deleted = admin.delete(&key, scope.as_deref()).await?;
            print(
                serde_json::json!({ "deleted": deleted }),
                if deleted {
                    format!("deleted the record of {key:?}\n")
                } else {
                    format!("no record for {key:?}; nothing deleted\n")
                },
            );
            if !deleted {
                std::process::exit(1);
            }
        }
        KeysAction::PurgeExpired { batch } => {
            // Counted first, so that progress has a length and a time left.
            let expected = admin.stats().await?.expired;
            let started = std::time::Instant::now();
            let total = if json {
                admin.purge_expired(batch.max(1), |_| {}).await?
            } else if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new(expected);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {human_pos}/{human_len} expired records purged ({per_sec}, {eta} left)",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let total = admin
                    .purge_expired(batch.max(1), |n| {
                        // Records that expired meanwhile are purged too.
                        bar.set_length(expected.max(n));
                        bar.set_position(n);
                    })
                    .await?;
                bar.finish_and_clear();
                total
            } else {
                eprintln!("purging {expected} expired records");
                let mut last = std::time::Instant::now();
                admin
                    .purge_expired(batch.max(1), |n| {
                        if last.elapsed() >= std::time::Duration::from_secs(1) {
                            last = std::time::Instant::now();
                            eprintln!("{}", purge_progress(n, expected, started.elapsed()));
                        }
                    })
                    .await?
            };
            let secs = started.elapsed().as_secs_f64();
            print(
                serde_json::json!({ "purged": total, "expected": expected, "seconds": secs }),
                format!("purged {total} expired records in {secs:.2}s\n"),
            );
        }
        KeysAction::Sign { .. } | KeysAction::Verify { .. } => unreachable!("handled above"),
        KeysAction::Stats => {
            let s = admin.stats().await?;
            print(
                serde_json::json!({ "in_progress": s.in_progress, "completed": s.completed, "expired": s.expired }),
                format!(
                    "in_progress  {}\ncompleted    {}\nexpired      {}\n",
                    s.in_progress, s.completed, s.expired
                ),
            );
        }
    }
    Ok(())
}

/// One line of `idem keys purge-expired`'s progress off a terminal: done,
/// rate, and time left at that rate.
fn purge_progress(done: u64, expected: u64, elapsed: std::time::Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-6);
    let left = expected.saturating_sub(done);
    let eta = if rate > 0.0 {
        format!("{:.0}s left", left as f64 / rate)
    } else {
        "time left unknown".to_owned()
    };
    format!("purged {done} of {expected} expired records ({rate:.0}/s, {eta})")
}

fn read_signing_secret(path: &std::path::Path) -> anyhow::Result<idem_core::Secret> {
    idem_core::Secret::read_file(path).with_context(|| {
        format!(
            "cannot read the key-signing secret {}; create one with: openssl rand -hex 32 > {}",
            path.display(),
            path.display()
        )
    })
}
