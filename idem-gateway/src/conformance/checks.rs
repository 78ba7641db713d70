//! The catalogue: each check, what it comes from, and how it decides.
//!
//! A check passes only on what it saw. When the server never gave it what
//! it needs (the first request of a pair refused, the budget spent, the
//! network failing) it says it could not tell, never pass.

use std::collections::BTreeSet;
use std::sync::Mutex;

use bytes::Bytes;

use super::catalogue::{Check, Outcome, Verdict};
use super::target::{new_key, Answer, Key, SendError, Target, Who};

/// What the checks share: the target, the refusals seen (for
/// `problem-json`), and the replay seen by `retry-replays` (for
/// `replay-marked`).
pub(super) struct Ctx<'a> {
    pub(super) target: &'a Target,
    pub(super) concurrency: usize,
    pub(super) rounds: usize,
    refusals: Mutex<Vec<(String, Answer)>>,
    replay: Mutex<Option<(Answer, Answer)>>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(target: &'a Target, concurrency: usize, rounds: usize) -> Self {
        Self {
            target,
            concurrency,
            rounds,
            refusals: Mutex::new(Vec::new()),
            replay: Mutex::new(None),
        }
    }

    fn refused(&self, what: &str, a: &Answer) {
        if (400..500).contains(&a.status) {
            if let Ok(mut r) = self.refusals.lock() {
                r.push((what.to_owned(), a.clone()));
            }
        }
    }
}

/// A check's outcome being written.
struct Found {
    check: Check,
    evidence: Vec<String>,
    tries: Option<usize>,
}

impl Found {
    fn new(check: Check) -> Self {
        Self {
            check,
            evidence: Vec::new(),
            tries: None,
        }
    }

    fn saw(&mut self, request: &str, a: &Answer) {
        self.evidence.push(format!("{request} → {}", a.brief()));
    }

    fn verdict(self, verdict: Verdict, summary: impl Into<String>) -> Outcome {
        Outcome {
            check: self.check,
            verdict,
            summary: summary.into(),
            evidence: self.evidence,
            tries: self.tries,
        }
    }

    fn unanswered(self, e: SendError) -> Outcome {
        self.verdict(Verdict::CouldNotTell, e.to_string())
    }

    /// The first request of a pair was not accepted: nothing to compare.
    fn not_accepted(self, a: &Answer) -> Outcome {
        let status = a.status;
        self.verdict(
            Verdict::CouldNotTell,
            format!("the first request was answered {status}, not accepted; give a --body (and --header) the API accepts"),
        )
    }
}

/// Sends a request (the expression before `.await`) and notes it, with
/// the label formatted from the rest, as evidence; a request that got no
/// answer ends the check: it could not tell.
macro_rules! exchange {
    ($f:ident, $send:expr, $($label:tt)+) => {
        match $send.await {
            Ok(a) => {
                $f.saw(&format!($($label)+), &a);
                a
            }
            Err(e) => return $f.unanswered(e),
        }
    };
}

/// Runs `check`.
pub(super) async fn run(check: Check, ctx: &Ctx<'_>) -> Outcome {
    let found = Found::new(check);
    match check.id {
        "missing-key" => missing_key(found, ctx).await,
        "malformed-key" => malformed_key(found, ctx).await,
        "retry-replays" => retry_replays(found, ctx).await,
        "replay-marked" => replay_marked(found, ctx),
        "concurrent-duplicates" => concurrent(found, ctx).await,
        "failure-not-stored" => failure_not_stored(found, ctx).await,
        "payload-mismatch" => payload_mismatch(found, ctx).await,
        "quoted-key" => quoted_key(found, ctx).await,
        "scoped-keys" => scoped(found, ctx).await,
        _ => problem_json(found, ctx),
    }
}

fn same(a: &Answer, b: &Answer) -> bool {
    a.status == b.status && a.body == b.body
}

async fn missing_key(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    let a = exchange!(
        f,
        t.send(Key::None, &t.body(), Who::First),
        "{} without a key",
        t.method
    );
    ctx.refused("no key", &a);
    match a.status {
        400 => f.verdict(Verdict::Pass, "refused with 400"),
        401..=499 => {
            let s = a.status;
            f.verdict(
                Verdict::Pass,
                format!("refused with {s} (the draft and SPEC say 400)"),
            )
        }
        200..=399 => f.verdict(
            Verdict::Fail,
            "accepted without a key: a retry of this request cannot be recognised",
        ),
        _ => f.verdict(Verdict::CouldNotTell, "the server failed (5xx)"),
    }
}

async fn malformed_key(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    let long = "a".repeat(1024);
    let keys: [(&str, &str); 4] = [
        ("an empty key", ""),
        ("an empty quoted string", "\"\""),
        ("a key of 1024 characters", &long),
        ("an unterminated quoted string", "\"unterminated-key-0001"),
    ];
    let mut accepted = Vec::new();
    let mut failed = 0;
    for (what, key) in keys {
        let a = exchange!(
            f,
            t.send(Key::Raw(key), &t.body(), Who::First),
            "{} with {what}",
            t.method
        );
        ctx.refused(what, &a);
        if a.status < 400 {
            accepted.push(what);
        } else if a.status >= 500 {
            failed += 1;
        }
    }
    if !accepted.is_empty() {
        f.verdict(Verdict::Fail, format!("accepted {}", accepted.join(", ")))
    } else if failed > 0 {
        f.verdict(Verdict::CouldNotTell, "the server failed (5xx) on some")
    } else {
        f.verdict(Verdict::Pass, "all four refused with 4xx")
    }
}

async fn retry_replays(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    let key = new_key();
    let body = t.body();
    let first = exchange!(
        f,
        t.send(Key::Raw(&key), &body, Who::First),
        "{} key={key}",
        t.method
    );
    if !first.is_success() {
        return f.not_accepted(&first);
    }
    let retry = exchange!(
        f,
        t.send(Key::Raw(&key), &body, Who::First),
        "{} key={key} (the same request again)",
        t.method
    );
    if let Ok(mut r) = ctx.replay.lock() {
        *r = Some((first.clone(), retry.clone()));
    }
    if same(&first, &retry) {
        f.verdict(
            Verdict::Pass,
            "the retry got the first answer byte for byte",
        )
    } else if retry.is_success() {
        f.verdict(
            Verdict::Fail,
            "the retry got another successful answer: the operation ran twice",
        )
    } else {
        let s = retry.status;
        f.verdict(
            Verdict::Fail,
            format!("the retry got {s} instead of the first answer"),
        )
    }
}

fn replay_marked(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let seen = ctx.replay.lock().ok().and_then(|r| r.clone());
    let Some((first, retry)) = seen else {
        return f.verdict(Verdict::CouldNotTell, "retry-replays saw no replay");
    };
    if !same(&first, &retry) {
        return f.verdict(Verdict::CouldNotTell, "retry-replays saw no replay");
    }
    f.saw("the retry of retry-replays", &retry);
    let marked = retry
        .headers
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let first_marked = first.headers.contains_key("idempotent-replayed");
    if marked && !first_marked {
        f.verdict(
            Verdict::Pass,
            "the replay carries Idempotent-Replayed: true, the original does not",
        )
    } else if first_marked {
        f.verdict(
            Verdict::Fail,
            "the first answer, an execution, is marked as a replay",
        )
    } else {
        f.verdict(
            Verdict::Fail,
            "the replay is not marked (Idempotent-Replayed: true): a client cannot tell it from an execution",
        )
    }
}

async fn concurrent(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    let n = ctx.concurrency.max(2);
    let mut rounds = 0;
    let mut odd: BTreeSet<u16> = BTreeSet::new();
    let mut executed_alone = 0;
    for _ in 0..ctx.rounds {
        if t.left() < n {
            break;
        }
        rounds += 1;
        let key = new_key();
        let body = t.body();
        let answers = futures_util::future::join_all(
            (0..n).map(|_| t.send(Key::Raw(&key), &body, Who::First)),
        )
        .await;
        let mut successes: Vec<&Answer> = Vec::new();
        for a in answers.iter() {
            match a {
                Ok(a) if a.is_success() => successes.push(a),
                Ok(a) => {
                    if a.status == 409 {
                        ctx.refused("a concurrent duplicate", a);
                    } else {
                        odd.insert(a.status);
                    }
                }
                Err(e) => {
                    f.tries = Some(rounds);
                    return f.verdict(Verdict::CouldNotTell, e.to_string());
                }
            }
        }
        let distinct: BTreeSet<&Bytes> = successes.iter().map(|a| &a.body).collect();
        if distinct.len() > 1 {
            for a in successes
                .iter()
                .filter(|a| distinct.contains(&a.body))
                .take(4)
            {
                f.saw(&format!("{} key={key} (one of {n} at once)", t.method), a);
            }
            f.tries = Some(rounds);
            return f.verdict(
                Verdict::Fail,
                format!(
                    "round {rounds}: {n} requests with one key got {} different successful answers: the operation ran {} times",
                    distinct.len(),
                    distinct.len()
                ),
            );
        }
        if successes.len() == 1 {
            executed_alone += 1;
        }
        if successes.is_empty() {
            if let Some(Ok(a)) = answers.first() {
                f.saw(&format!("{} key={key} (one of {n} at once)", t.method), a);
            }
            f.tries = Some(rounds);
            return f.verdict(
                Verdict::CouldNotTell,
                "no request of a round was accepted; give a --body the API accepts",
            );
        }
    }
    f.tries = Some(rounds);
    if rounds == 0 {
        return f.verdict(
            Verdict::CouldNotTell,
            format!("the request budget left is under one round of {n}"),
        );
    }
    if !odd.is_empty() {
        f.evidence.push(format!(
            "other answers than 2xx and 409: {}",
            odd.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    f.evidence.push(format!(
        "{rounds} rounds of {n} concurrent requests, one new key each; {executed_alone} rounds answered one success and {} a success and its replays",
        rounds - executed_alone
    ));
    f.verdict(
        Verdict::Pass,
        format!("{rounds} × {n} concurrent duplicates: one execution per key"),
    )
}

async fn failure_not_stored(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    let Some(trigger) = t.fail_header() else {
        return f.verdict(
            Verdict::NotApplicable,
            "give the header that makes the endpoint fail with a 5xx (a test hook), as --fail-header 'X-Fail: 1'",
        );
    };
    let key = new_key();
    let body = t.body();
    let failed = exchange!(
        f,
        t.send_failing(Key::Raw(&key), &body),
        "{} key={key} with {trigger}",
        t.method
    );
    if failed.status < 500 {
        let s = failed.status;
        return f.verdict(
            Verdict::CouldNotTell,
            format!("{trigger} was answered {s}, not a 5xx"),
        );
    }
    let retry = exchange!(
        f,
        t.send(Key::Raw(&key), &body, Who::First),
        "{} key={key} (the retry, without the trigger)",
        t.method
    );
    if retry.headers.contains_key("idempotent-replayed") || same(&failed, &retry) {
        f.verdict(
            Verdict::Fail,
            "the retry got the stored failure: the operation never runs for this key",
        )
    } else if retry.is_success() {
        f.verdict(Verdict::Pass, "the retry executed and succeeded")
    } else {
        let s = retry.status;
        f.verdict(
            Verdict::CouldNotTell,
            format!("the retry was answered {s}; the endpoint may still be failing"),
        )
    }
}

async fn payload_mismatch(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    let key = new_key();
    let body = t.body();
    let first = exchange!(
        f,
        t.send(Key::Raw(&key), &body, Who::First),
        "{} key={key}",
        t.method
    );
    if !first.is_success() {
        return f.not_accepted(&first);
    }
    let other = t.other_body(&body);
    let second = exchange!(
        f,
        t.send(Key::Raw(&key), &other, Who::First),
        "{} key={key} with another payload",
        t.method
    );
    ctx.refused("a key reused for another payload", &second);
    if second.status == 422 {
        f.verdict(Verdict::Pass, "refused with 422")
    } else if same(&first, &second) {
        f.verdict(
            Verdict::Fail,
            "the other payload got the first payload's answer: the client believes its new request ran",
        )
    } else if second.is_success() {
        f.verdict(
            Verdict::Fail,
            "the other payload executed under a key already used",
        )
    } else if (400..500).contains(&second.status) {
        let s = second.status;
        f.verdict(
            Verdict::Pass,
            format!("refused with {s} (the draft and SPEC say 422)"),
        )
    } else {
        f.verdict(Verdict::CouldNotTell, "the server failed (5xx)")
    }
}

async fn quoted_key(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    let key = new_key();
    let quoted = format!("\"{key}\"");
    let body = t.body();
    let first = exchange!(
        f,
        t.send(Key::Raw(&quoted), &body, Who::First),
        "{} key={quoted}",
        t.method
    );
    if (400..500).contains(&first.status) {
        ctx.refused("a quoted key", &first);
        let s = first.status;
        return f.verdict(
            Verdict::Fail,
            format!("the draft's quoted form was refused with {s}"),
        );
    }
    if !first.is_success() {
        return f.not_accepted(&first);
    }
    let bare = exchange!(
        f,
        t.send(Key::Raw(&key), &body, Who::First),
        "{} key={key} (bare)",
        t.method
    );
    if same(&first, &bare) {
        f.verdict(
            Verdict::Pass,
            "the bare key replayed the quoted key's answer",
        )
    } else if bare.is_success() {
        f.verdict(
            Verdict::Fail,
            "the bare key executed again: quoted and bare are two keys, so a client switching forms pays twice",
        )
    } else {
        let s = bare.status;
        f.verdict(
            Verdict::Fail,
            format!("the bare key got {s} instead of the quoted key's answer"),
        )
    }
}

async fn scoped(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let t = ctx.target;
    if !t.has_two_credentials() {
        return f.verdict(
            Verdict::NotApplicable,
            "give two credentials: the same header twice, as --header 'Authorization: Bearer A' --header 'Authorization: Bearer B'",
        );
    }
    let name = t.credential_name().unwrap_or("credential").to_owned();
    let key = new_key();
    let body = t.body();
    let first = exchange!(
        f,
        t.send(Key::Raw(&key), &body, Who::First),
        "{} key={key} with the first {name}",
        t.method
    );
    if !first.is_success() {
        return f.not_accepted(&first);
    }
    let second = exchange!(
        f,
        t.send(Key::Raw(&key), &body, Who::Second),
        "{} key={key} with the second {name}",
        t.method
    );
    if same(&first, &second) || second.headers.contains_key("idempotent-replayed") {
        f.verdict(
            Verdict::Fail,
            "the second credential got the first one's stored answer: one user can read another's",
        )
    } else if second.status == 409 || second.status == 422 {
        let s = second.status;
        f.verdict(
            Verdict::Fail,
            format!("the second credential got {s}: keys are shared between credentials, so one user's key blocks another's"),
        )
    } else if second.is_success() {
        f.verdict(
            Verdict::Pass,
            "the second credential's request executed on its own",
        )
    } else {
        let s = second.status;
        f.verdict(
            Verdict::CouldNotTell,
            format!("the second credential's request was answered {s}; is it a valid credential?"),
        )
    }
}

fn problem_json(mut f: Found, ctx: &Ctx<'_>) -> Outcome {
    let refusals = ctx.refusals.lock().map(|r| r.clone()).unwrap_or_default();
    if refusals.is_empty() {
        return f.verdict(Verdict::CouldNotTell, "the other checks saw no refusal");
    }
    let mut plain = Vec::new();
    for (what, a) in &refusals {
        if !a.content_type().starts_with("application/problem+json") {
            f.saw(what, a);
            plain.push(format!("{what} ({}, {:?})", a.status, a.content_type()));
        }
    }
    if plain.is_empty() {
        f.evidence.push(format!(
            "{} refusals, each application/problem+json",
            refusals.len()
        ));
        f.verdict(Verdict::Pass, "every refusal seen is problem+json")
    } else {
        f.verdict(
            Verdict::Fail,
            format!("not problem+json: {}", plain.join("; ")),
        )
    }
}
