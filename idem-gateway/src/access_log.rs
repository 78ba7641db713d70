//! The gateway's access log (`access_log`): the layer's access lines,
//! written to standard error the way the other log lines are (the same
//! text or JSON shape, `--log-format`), but buffered.
//!
//! Why not as `tracing` events like the rest: formatting an event through
//! the subscriber and writing it with a system call of its own cost about
//! 17,000 instructions per request (`bench/instructions.sh`,
//! `first-gateway-logged`), a fifth of a first execution. Here a line is
//! formatted by hand into a shared buffer (a short lock), and a writer
//! thread empties the buffer every 100 ms, or the request that fills it past
//! 32 KiB does. Writes are cut at line ends into pieces of at most 4 KiB,
//! which a pipe takes whole, so an access line never interleaves with
//! another log line. A line waits at most 100 ms; at shutdown the gateway
//! writes what is left.

use std::io::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idem::{AccessLine, AccessLog};

/// Past this many buffered bytes, the request that adds a line writes.
const FLUSH_AT: usize = 32 << 10;
/// A pipe writes this much at once without interleaving (`PIPE_BUF`).
const PIECE: usize = 4096;
/// How long a line may wait in the buffer.
const EVERY: Duration = Duration::from_millis(100);

/// The buffered writer of access lines.
pub struct AccessWriter {
    json: bool,
    buf: Mutex<Vec<u8>>,
}

impl AccessWriter {
    /// A writer of text lines, or JSON objects with `json`, with its thread
    /// that writes the buffer out every 100 ms (it ends with the writer).
    pub fn start(json: bool) -> Arc<Self> {
        let writer = Arc::new(Self {
            json,
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT + 1024)),
        });
        let weak: Weak<Self> = Arc::downgrade(&writer);
        let spawned = std::thread::Builder::new()
            .name("idem-access-log".into())
            .spawn(move || loop {
                std::thread::sleep(EVERY);
                match weak.upgrade() {
                    Some(w) => w.flush(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the access log's writer thread; lines are written when 32 KiB have gathered and at shutdown");
        }
        writer
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        write_out(&mut buf);
    }
}

impl AccessLog for AccessWriter {
    fn log(&self, line: &AccessLine<'_>) {
        // Formatted outside the lock, into a buffer this thread keeps.
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        LINE.with(|cell| {
            let Ok(mut one) = cell.try_borrow_mut() else {
                return;
            };
            one.clear();
            if self.json {
                json_line(&mut one, line);
            } else {
                text_line(&mut one, line);
            }
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(&one);
            if buf.len() >= FLUSH_AT {
                write_out(&mut buf);
            }
        });
    }
}

/// Writes `buf` to standard error in pieces cut at line ends, and empties it.
fn write_out(buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let mut err = std::io::stderr().lock();
    let mut rest = &buf[..];
    while !rest.is_empty() {
        let cut = piece(rest);
        // Standard error gone (a closed pipe): the lines are lost, the
        // requests are not.
        let _ = err.write_all(&rest[..cut]);
        rest = &rest[cut..];
    }
    buf.clear();
}

/// How much of `rest` to write at once: whole lines, at most a piece (a
/// single line longer than a piece goes whole).
fn piece(rest: &[u8]) -> usize {
    if rest.len() <= PIECE {
        return rest.len();
    }
    match rest[..PIECE].iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1),
    }
}

/// `2026-12-02T05:45:01.123456Z`, as the other log lines start.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    // The date and time to the second, made once a second per thread.
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = civil(secs);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    digits(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

/// `2026-12-02T05:45:01` for `secs` since the epoch.
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let in_day = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = [0u8; 19];
    let formatted = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    );
    let n = formatted.len().min(19);
    text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
    text
}

/// `n` in decimal, zero-padded to `width` digits.
fn digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while n > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = i.min(buf.len() - width.min(buf.len()));
    out.extend_from_slice(&buf[start..]);
}

/// Milliseconds with microsecond precision (`2.104`), without a float.
fn ms(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    digits(out, micros / 1000, 1);
    out.push(b'.');
    digits(out, micros % 1000, 3);
}

/// `"text"`, escaped as `{:?}` escapes it; plain text (the usual path
/// and route) is copied as is.
fn quoted(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// `… INFO access method="POST" path="/payments" … duration_ms=2.104`, the
/// shape of the gateway's other text lines.
fn text_line(out: &mut Vec<u8>, l: &AccessLine<'_>) {
    timestamp(out, SystemTime::now());
    out.extend_from_slice(b"  INFO access method=");
    quoted(out, l.method.as_str());
    out.extend_from_slice(b" path=");
    quoted(out, l.path);
    out.extend_from_slice(b" route=");
    quoted(out, l.route);
    out.extend_from_slice(b" status=");
    digits(out, u64::from(l.status), 1);
    out.extend_from_slice(b" outcome=");
    quoted(out, l.outcome);
    out.extend_from_slice(b" key=");
    key(out, l);
    out.extend_from_slice(b" duration_ms=");
    ms(out, l.duration);
    if let Some(up) = l.upstream {
        out.extend_from_slice(b" upstream_ms=");
        ms(out, up);
    }
    out.push(b'\n');
}

/// The key's hash, or `-`.
fn key(out: &mut Vec<u8>, l: &AccessLine<'_>) {
    match l.key {
        Some(k) => {
            let _ = write!(out, "{k}");
        }
        None => out.push(b'-'),
    }
}

/// A JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Cannot fail: writing a str into a Vec.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// `{"timestamp":…,"level":"INFO","fields":{"message":"access",…}}`, the
/// shape of the gateway's other JSON lines.
fn json_line(out: &mut Vec<u8>, l: &AccessLine<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, SystemTime::now());
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"access\",\"method\":");
    json_str(out, l.method.as_str());
    out.extend_from_slice(b",\"path\":");
    json_str(out, l.path);
    out.extend_from_slice(b",\"route\":");
    json_str(out, l.route);
    out.extend_from_slice(b",\"status\":");
    digits(out, u64::from(l.status), 1);
    out.extend_from_slice(b",\"outcome\":");
    json_str(out, l.outcome);
    out.extend_from_slice(b",\"key\":\"");
    key(out, l);
    out.extend_from_slice(b"\",\"duration_ms\":");
    ms(out, l.duration);
    if let Some(up) = l.upstream {
        out.extend_from_slice(b",\"upstream_ms\":");
        ms(out, up);
    }
    out.extend_from_slice(b"},\"target\":\"idem::access\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(upstream: Option<Duration>) -> AccessLine<'static> {
        static POST: http::Method = http::Method::POST;
        let mut l = AccessLine::new(&POST, "/pay\"ments", "*", 201, "executed");
        l.duration = Duration::from_micros(2104);
        l.upstream = upstream;
        l
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut out = Vec::new();
        timestamp(
            &mut out,
            UNIX_EPOCH + Duration::new(1_764_653_101, 123_456_789),
        );
        assert_eq!(String::from_utf8_lossy(&out), "2025-12-02T05:25:01.123456Z");
        out.clear();
        timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(String::from_utf8_lossy(&out), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn numbers_are_written_without_floats() {
        let mut out = Vec::new();
        ms(&mut out, Duration::from_micros(2104));
        out.push(b' ');
        ms(&mut out, Duration::from_micros(7));
        out.push(b' ');
        ms(&mut out, Duration::from_secs(12));
        out.push(b' ');
        digits(&mut out, 0, 1);
        out.push(b' ');
        digits(&mut out, 42, 6);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "2.104 0.007 12000.000 0 000042"
        );
    }

    #[test]
    fn a_json_line_parses_and_escapes() {
        let mut out = Vec::new();
        json_line(&mut out, &line(Some(Duration::from_micros(1871))));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["fields"]["path"], "/pay\"ments");
        assert_eq!(v["fields"]["status"], 201);
        assert_eq!(v["fields"]["key"], "-");
        assert_eq!(v["fields"]["duration_ms"], 2.104);
        assert_eq!(v["fields"]["upstream_ms"], 1.871);
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn a_text_line_has_every_field() {
        let mut out = Vec::new();
        text_line(&mut out, &line(None));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.ends_with(" INFO access method=\"POST\" path=\"/pay\\\"ments\" route=\"*\" status=201 outcome=\"executed\" key=- duration_ms=2.104\n"),
            "{text}"
        );
    }

    #[test]
    fn writes_are_cut_at_line_ends() {
        let mut pieces = Vec::new();
        let lines: Vec<u8> = (0..300)
            .flat_map(|i| format!("line {i:04} {}\n", "x".repeat(40)).into_bytes())
            .collect();
        let mut rest = &lines[..];
        while !rest.is_empty() {
            let cut = piece(rest);
            pieces.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        assert!(pieces
            .iter()
            .all(|p| p.len() <= PIECE && p.ends_with(b"\n")));
        assert!(pieces.len() > 1);
        assert_eq!(pieces.concat(), lines);
        // A line longer than a piece goes whole.
        let long = format!("{}\nnext\n", "y".repeat(PIECE + 10));
        assert_eq!(piece(long.as_bytes()), PIECE + 11);
    }
}
