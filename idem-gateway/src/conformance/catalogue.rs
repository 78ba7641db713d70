//! The catalogue: every check with the rule it comes from, and what a
//! check's run gives (`checks.rs` runs them).

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server behaved as the rule says.
    Pass,
    /// It did not: the evidence shows how.
    Fail,
    /// The check does not apply (say, one credential where two are needed).
    NotApplicable,
    /// The server never gave the check what it needs to decide.
    CouldNotTell,
}

impl Verdict {
    /// `pass`, `fail`, `not-applicable`, `could-not-tell`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::NotApplicable => "not-applicable",
            Self::CouldNotTell => "could-not-tell",
        }
    }
}

/// One check of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// A stable id (`retry-replays`).
    pub id: &'static str,
    /// What it verifies.
    pub title: &'static str,
    /// Where the rule comes from.
    pub source: &'static str,
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The check.
    pub check: Check,
    /// Its verdict.
    pub verdict: Verdict,
    /// One sentence: why.
    pub summary: String,
    /// The requests and answers it saw, abbreviated.
    pub evidence: Vec<String>,
    /// For checks that repeat (races): how many times they tried.
    pub tries: Option<usize>,
}

/// The checks, in the order they run.
pub const CATALOGUE: [Check; 10] = [
    Check {
        id: "missing-key",
        title: "a request without a key is refused and does not execute",
        source: "SPEC rule 1; IETF draft-ietf-httpapi-idempotency-key-header §2.7 (400)",
    },
    Check {
        id: "malformed-key",
        title: "malformed keys (empty, empty quoted string, 1024 characters, unterminated quote) are refused",
        source: "SPEC rule 2; IETF draft §2.1 (the key is a Structured Field string)",
    },
    Check {
        id: "retry-replays",
        title: "a retry with the same key and payload gets the first answer's status and body",
        source: "SPEC rules 3 and 4; IETF draft §2.6",
    },
    Check {
        id: "replay-marked",
        title: "a replayed answer says so (Idempotent-Replayed: true)",
        source: "SPEC rule 4 (the IETF draft defines no marker)",
    },
    Check {
        id: "concurrent-duplicates",
        title: "concurrent requests with one new key execute once; the others get 409 or the replay",
        source: "SPEC rules 3 and 5; IETF draft §2.7 (409)",
    },
    Check {
        id: "failure-not-stored",
        title: "a 5xx answer is not stored: a retry after it executes",
        source: "SPEC rule 7; IETF draft §2.6 (only a completed operation's answer is returned again)",
    },
    Check {
        id: "payload-mismatch",
        title: "the same key with another payload is refused (422) and never gets the first answer",
        source: "SPEC rule 6; IETF draft §2.7 (422)",
    },
    Check {
        id: "quoted-key",
        title: "a quoted key (\"k\") and the bare key (k) are the same key",
        source: "SPEC terms (key); IETF draft §2.1",
    },
    Check {
        id: "scoped-keys",
        title: "two credentials never see each other's stored answers",
        source: "SPEC terms (scope); IETF draft, Security Considerations",
    },
    Check {
        id: "problem-json",
        title: "refusals are application/problem+json",
        source: "SPEC (errors); IETF draft §2.7; RFC 9457",
    },
];
