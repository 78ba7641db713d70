//! The report: text for people, JSON for programs, JUnit XML for CI.

use std::fmt::Write as _;

use serde_json::json;

use super::catalogue::{Outcome, Verdict};

/// What a run found.
pub struct Report {
    /// `POST http://host/payments`.
    pub target: String,
    /// Requests sent.
    pub requests: usize,
    /// One outcome per check, in catalogue order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| o.verdict == Verdict::Fail)
    }

    fn count(&self, v: Verdict) -> usize {
        self.outcomes.iter().filter(|o| o.verdict == v).count()
    }

    /// `9 checks: 7 passed, 1 failed, …`.
    pub fn tally(&self) -> String {
        format!(
            "{} checks: {} passed, {} failed, {} not applicable, {} could not tell; {} requests",
            self.outcomes.len(),
            self.count(Verdict::Pass),
            self.count(Verdict::Fail),
            self.count(Verdict::NotApplicable),
            self.count(Verdict::CouldNotTell),
            self.requests
        )
    }

    /// One block per check, evidence indented.
    pub fn text(&self) -> String {
        let mut out = format!("idem conformance: {}\n\n", self.target);
        for o in &self.outcomes {
            let verdict = match o.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::NotApplicable => "N/A ",
                Verdict::CouldNotTell => "??  ",
            };
            let _ = writeln!(out, "{verdict}  {:<22} {}", o.check.id, o.check.title);
            let _ = writeln!(out, "      {}", o.summary);
            if let Some(n) = o.tries {
                let times = if n == 1 {
                    "once".to_owned()
                } else {
                    format!("{n} times")
                };
                let _ = writeln!(out, "      tried {times}");
            }
            let _ = writeln!(out, "      from {}", o.check.source);
            if o.verdict != Verdict::Pass {
                for e in &o.evidence {
                    let _ = writeln!(out, "        {e}");
                }
            }
        }
        let _ = writeln!(out, "\n{}", self.tally());
        out
    }

    /// One JSON document.
    pub fn json(&self) -> String {
        let checks: Vec<_> = self
            .outcomes
            .iter()
            .map(|o| {
                json!({
                    "id": o.check.id,
                    "title": o.check.title,
                    "source": o.check.source,
                    "verdict": o.verdict.as_str(),
                    "summary": o.summary,
                    "tries": o.tries,
                    "evidence": o.evidence,
                })
            })
            .collect();
        let doc = json!({
            "target": self.target,
            "requests": self.requests,
            "passed": !self.failed(),
            "checks": checks,
        });
        format!("{doc:#}\n")
    }

    /// JUnit XML: one test case per check; a failure is `<failure>`, a
    /// check that does not apply or could not tell is `<skipped>`.
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites><testsuite name=\"idem conformance\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\">",
            self.outcomes.len(),
            self.count(Verdict::Fail),
            self.count(Verdict::NotApplicable) + self.count(Verdict::CouldNotTell)
        );
        let _ = writeln!(
            out,
            "  <properties><property name=\"target\" value=\"{}\"/><property name=\"requests\" value=\"{}\"/></properties>",
            xml(&self.target),
            self.requests
        );
        for o in &self.outcomes {
            let _ = write!(
                out,
                "  <testcase classname=\"idem.conformance\" name=\"{}\">",
                xml(o.check.id)
            );
            let detail = format!(
                "{}\nfrom {}\n{}",
                o.summary,
                o.check.source,
                o.evidence.join("\n")
            );
            match o.verdict {
                Verdict::Pass => {}
                Verdict::Fail => {
                    let _ = write!(
                        out,
                        "<failure message=\"{}\">{}</failure>",
                        xml(&o.summary),
                        xml(&detail)
                    );
                }
                Verdict::NotApplicable | Verdict::CouldNotTell => {
                    let _ = write!(
                        out,
                        "<skipped message=\"{}: {}\"/>",
                        o.verdict.as_str(),
                        xml(&o.summary)
                    );
                }
            }
            let _ = writeln!(out, "<system-out>{}</system-out></testcase>", xml(&detail));
        }
        out.push_str("</testsuite></testsuites>\n");
        out
    }
}

/// Text escaped for XML attributes and content; characters XML 1.0 cannot
/// carry become U+FFFD.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}
