//! Open-loop HTTP load at a fixed rate: first executions (a new
//! `Idempotency-Key` per request) sent on a schedule, each request's latency
//! counted from the moment the schedule meant to send it, so a server that
//! stalls is charged for every request the stall held back (what wrk2 does;
//! wrk's closed loop sends less while the server stalls and reports a tail
//! that flatters it). Used by bench/sqlite-p99.sh.
//!
//! Usage: `open_loop URL RATE SECONDS [CONNECTIONS=64] [BODY]`; prints the
//! achieved rate, latency percentiles and the non-2xx count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PAYMENT: &str = r#"{"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}"#;

struct Target {
    addr: String,
    host: String,
    path: String,
    body: String,
}

fn parse(url: &str, body: String) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the URL must start with http://")?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok(Target {
        addr: addr.to_owned(),
        host: addr.to_owned(),
        path: path.to_owned(),
        body,
    })
}

/// One request and its answer on `conn`; the status.
async fn exchange(conn: &mut BufReader<TcpStream>, t: &Target, key: &str) -> std::io::Result<u16> {
    let req = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nidempotency-key: {key}\r\ncontent-length: {}\r\n\r\n{}",
        t.path,
        t.host,
        t.body.len(),
        t.body
    );
    conn.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await?;
    Ok(status)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: open_loop URL RATE SECONDS [CONNECTIONS=64] [BODY]".into());
    }
    let rate: f64 = args[2].parse()?;
    let secs: f64 = args[3].parse()?;
    let conns: usize = args.get(4).map_or(Ok(64), |c| c.parse())?;
    let target = Arc::new(parse(
        &args[1],
        args.get(5).cloned().unwrap_or_else(|| PAYMENT.to_owned()),
    )?);
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let run = format!("{:x}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (latencies, errors, elapsed) = rt.block_on(async move {
        let next = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
        let errors = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (next, latencies, errors, target, run) = (
                next.clone(),
                latencies.clone(),
                errors.clone(),
                target.clone(),
                run.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut conn = match TcpStream::connect(&target.addr).await {
                    Ok(s) => BufReader::new(s),
                    Err(_) => return,
                };
                let _ = conn.get_ref().set_nodelay(true);
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + interval.mul_f64(i as f64);
                    // tokio's timers tick in milliseconds: sleep to the
                    // tick before, then yield until due, so requests leave
                    // on time and latencies are not inflated by the timer.
                    tokio::time::sleep_until(due - Duration::from_millis(1)).await;
                    while tokio::time::Instant::now() < due {
                        tokio::task::yield_now().await;
                    }
                    let key = format!("ol-{run}-{i:010}");
                    match exchange(&mut conn, &target, &key).await {
                        Ok(s) if (200..300).contains(&s) => {}
                        Ok(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            match TcpStream::connect(&target.addr).await {
                                Ok(s) => conn = BufReader::new(s),
                                Err(_) => break,
                            }
                        }
                    }
                    mine.push(due.elapsed().as_micros() as u64);
                }
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(mine);
            }));
        }
        let began = Instant::now();
        for t in tasks {
            let _ = t.await;
        }
        let elapsed = began.elapsed();
        let lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
        (lat, errors.load(Ordering::Relaxed), elapsed)
    });
    let mut l = latencies;
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    println!(
        "requests {}  achieved {:.0}/s  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  non-2xx {}",
        l.len(),
        l.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        l.last().map_or(0.0, |v| *v as f64 / 1000.0),
        errors
    );
    Ok(())
}
