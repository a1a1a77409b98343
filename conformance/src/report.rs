//! The kit's answer: one row per check (what was checked, its verdict, what
//! was seen), printed as a table.

use std::fmt;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run, with the reason (a flag it needs, an earlier failure).
    Skip,
    /// Reported, not judged: something the contract allows but the kit
    /// could not provoke (an overload that never came).
    Note,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
            Verdict::Note => "note",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    /// What the kit saw: the reason for a failure, figures for a pass.
    pub seen: String,
}

/// Every check run against one service.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What was checked: `leaf http://127.0.0.1:7000`.
    pub subject: String,
    pub checks: Vec<Check>,
}

/// Longest `seen` column printed; the rest is cut with an ellipsis.
const MAX_SEEN: usize = 240;

impl Report {
    pub fn new(subject: impl Into<String>) -> Report {
        Report {
            subject: subject.into(),
            checks: Vec::new(),
        }
    }

    pub fn record(&mut self, name: &'static str, verdict: Verdict, seen: impl Into<String>) {
        self.checks.push(Check {
            name,
            verdict,
            seen: seen.into(),
        });
    }

    /// Records a check from its outcome: `Ok(seen)` passes, `Err(why)` fails.
    pub fn judge(&mut self, name: &'static str, outcome: Result<String, String>) {
        match outcome {
            Ok(seen) => self.record(name, Verdict::Pass, seen),
            Err(why) => self.record(name, Verdict::Fail, why),
        }
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.checks
            .iter()
            .filter(|check| check.verdict == verdict)
            .count()
    }

    pub fn passed(&self) -> bool {
        self.count(Verdict::Fail) == 0
    }

    /// The check of that name, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fanout conformance {}", self.subject)?;
        let width = self
            .checks
            .iter()
            .map(|check| check.name.len())
            .max()
            .unwrap_or(0)
            .max("CHECK".len());
        writeln!(f, "{:<width$}  RESULT  SEEN", "CHECK")?;
        for check in &self.checks {
            let mut seen = check.seen.replace('\n', " ");
            if seen.chars().count() > MAX_SEEN {
                seen = seen.chars().take(MAX_SEEN).collect::<String>() + "...";
            }
            writeln!(
                f,
                "{:<width$}  {:<6}  {seen}",
                check.name,
                check.verdict.as_str()
            )?;
        }
        write!(
            f,
            "{} checks: {} passed, {} failed, {} skipped, {} noted",
            self.checks.len(),
            self.count(Verdict::Pass),
            self.count(Verdict::Fail),
            self.count(Verdict::Skip),
            self.count(Verdict::Note)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_with_a_failure_is_not_passed_and_long_lines_are_cut() {
        let mut report = Report::new("leaf http://127.0.0.1:1");
        report.judge("info", Ok("shard 0 of 2".into()));
        report.judge(
            "deadline",
            Err("answered 1.9 s after a 50 ms deadline".into()),
        );
        report.record("overload", Verdict::Note, "x".repeat(500));
        assert!(!report.passed());
        let table = report.to_string();
        assert!(
            table.contains("deadline  FAIL    answered 1.9 s"),
            "{table}"
        );
        assert!(table.ends_with("3 checks: 1 passed, 1 failed, 0 skipped, 1 noted"));
        assert!(
            table.lines().all(|line| line.len() < MAX_SEEN + 40),
            "{table}"
        );
    }
}
