//! What happened to each shard, the `Coverage` it adds up to, and whether the
//! caller's policy (`allow_partial`, `min_coverage`) accepts it.
//!
//! - Every shard answered (or the merger said the rest were not needed): answer.
//! - No shard answered: UNAVAILABLE, or DEADLINE_EXCEEDED when every missing
//!   shard timed out, whatever the policy.
//! - Some missing and `allow_partial` is false: UNAVAILABLE when shards failed
//!   (the message lists them and why), else DEADLINE_EXCEEDED.
//! - Some missing and `allow_partial` is true: answer if the answered fraction
//!   is at least `min_coverage`, else the same errors as above.

use fanout_proto::v1::{Coverage, ShardFailure};
use tonic::Code;

use fanout_proto::status::code_name;

use crate::error::RequestError;

/// The caller's tolerance for missing shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoveragePolicy {
    pub allow_partial: bool,
    /// Least fraction of shards that must answer with `allow_partial`; 0 = any.
    pub min_coverage: f64,
}

impl CoveragePolicy {
    /// Validates `min_coverage` (in [0, 1]).
    pub fn new(allow_partial: bool, min_coverage: f64) -> Result<CoveragePolicy, RequestError> {
        if !(0.0..=1.0).contains(&min_coverage) {
            return Err(RequestError::InvalidRequest(format!(
                "min_coverage must be between 0 and 1, got {min_coverage}"
            )));
        }
        Ok(CoveragePolicy {
            allow_partial,
            min_coverage,
        })
    }
}

/// How one shard's part of a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutcome {
    /// It answered, covering this many documents.
    Answered { docs_covered: u64 },
    /// Every attempt failed; the last one with this status.
    Failed { code: Code, message: String },
    /// No answer before the deadline.
    TimedOut,
    /// Cancelled because the merger had enough without it.
    NotNeeded { reason: String },
}

/// The coverage of a request whose shards ended as `outcomes` (index = shard id).
pub fn coverage_of(outcomes: &[ShardOutcome], docs_total: u64) -> Coverage {
    let mut coverage = Coverage {
        shards_total: outcomes.len() as u32,
        docs_total,
        ..Coverage::default()
    };
    for (shard_id, outcome) in (0_u32..).zip(outcomes) {
        match outcome {
            ShardOutcome::Answered { docs_covered } => {
                coverage.shards_answered += 1;
                coverage.docs_covered += docs_covered;
            }
            ShardOutcome::Failed { code, message } => {
                coverage.shards_failed += 1;
                coverage.failures.push(ShardFailure {
                    shard_id,
                    code: code_name(*code).to_owned(),
                    message: message.clone(),
                });
            }
            ShardOutcome::TimedOut => {
                coverage.shards_timed_out += 1;
                coverage.failures.push(ShardFailure {
                    shard_id,
                    code: code_name(Code::DeadlineExceeded).to_owned(),
                    message: "no answer before the deadline".to_owned(),
                });
            }
            ShardOutcome::NotNeeded { reason } => {
                coverage.shards_timed_out += 1;
                coverage.failures.push(ShardFailure {
                    shard_id,
                    code: code_name(Code::Cancelled).to_owned(),
                    message: format!("not needed: {reason}"),
                });
            }
        }
    }
    coverage.partial = coverage.shards_answered < coverage.shards_total;
    coverage
}

/// Whether `policy` accepts a request whose shards ended as `outcomes`.
pub fn enforce(policy: &CoveragePolicy, outcomes: &[ShardOutcome]) -> Result<(), RequestError> {
    let total = outcomes.len();
    let satisfied = outcomes
        .iter()
        .filter(|outcome| {
            matches!(
                outcome,
                ShardOutcome::Answered { .. } | ShardOutcome::NotNeeded { .. }
            )
        })
        .count();
    if satisfied == total {
        return Ok(());
    }
    let any_failed = outcomes
        .iter()
        .any(|outcome| matches!(outcome, ShardOutcome::Failed { .. }));
    let missing = describe_missing(outcomes);
    let error = |summary: String| {
        let message = format!("{summary}: {missing}");
        if any_failed {
            RequestError::ShardsUnavailable(message)
        } else {
            RequestError::DeadlineExceeded(message)
        }
    };
    if satisfied == 0 {
        return Err(error(format!("none of the {total} shards answered")));
    }
    if !policy.allow_partial {
        return Err(error(format!(
            "{} of {total} shards did not answer and allow_partial is false",
            total - satisfied
        )));
    }
    let fraction = satisfied as f64 / total as f64;
    if fraction < policy.min_coverage {
        return Err(error(format!(
            "{satisfied} of {total} shards answered, below min_coverage {}",
            policy.min_coverage
        )));
    }
    Ok(())
}

/// `shard 1 failed (UNAVAILABLE: connection refused); shard 2 timed out`.
fn describe_missing(outcomes: &[ShardOutcome]) -> String {
    let mut parts = Vec::new();
    for (shard_id, outcome) in outcomes.iter().enumerate() {
        match outcome {
            ShardOutcome::Failed { code, message } => {
                parts.push(format!(
                    "shard {shard_id} failed ({}: {message})",
                    code_name(*code)
                ));
            }
            ShardOutcome::TimedOut => parts.push(format!("shard {shard_id} timed out")),
            ShardOutcome::Answered { .. } | ShardOutcome::NotNeeded { .. } => {}
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(docs: u64) -> ShardOutcome {
        ShardOutcome::Answered { docs_covered: docs }
    }

    fn failed(message: &str) -> ShardOutcome {
        ShardOutcome::Failed {
            code: Code::Unavailable,
            message: message.to_owned(),
        }
    }

    fn strict() -> CoveragePolicy {
        CoveragePolicy::new(false, 0.0).unwrap()
    }

    fn lenient(min_coverage: f64) -> CoveragePolicy {
        CoveragePolicy::new(true, min_coverage).unwrap()
    }

    #[test]
    fn min_coverage_must_be_a_fraction() {
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let error = CoveragePolicy::new(true, bad).unwrap_err();
            assert!(error.to_string().contains("min_coverage"), "{error}");
        }
        assert!(CoveragePolicy::new(true, 0.0).is_ok());
        assert!(CoveragePolicy::new(false, 1.0).is_ok());
    }

    #[test]
    fn full_coverage_is_accepted_by_every_policy() {
        let outcomes = [answered(10), answered(20)];
        assert!(enforce(&strict(), &outcomes).is_ok());
        assert!(enforce(&lenient(1.0), &outcomes).is_ok());
        let coverage = coverage_of(&outcomes, 30);
        assert_eq!(coverage.shards_answered, 2);
        assert_eq!(coverage.docs_covered, 30);
        assert!(!coverage.partial);
        assert!(coverage.failures.is_empty());
    }

    #[test]
    fn a_failed_shard_is_unavailable_without_allow_partial() {
        let outcomes = [answered(10), failed("connection refused")];
        let error = enforce(&strict(), &outcomes).unwrap_err();
        let RequestError::ShardsUnavailable(message) = &error else {
            panic!("expected unavailable, got {error:?}");
        };
        assert!(
            message.contains("shard 1 failed (UNAVAILABLE: connection refused)"),
            "{message}"
        );
    }

    #[test]
    fn a_timed_out_shard_is_deadline_exceeded_without_allow_partial() {
        let outcomes = [answered(10), ShardOutcome::TimedOut];
        let error = enforce(&strict(), &outcomes).unwrap_err();
        assert!(
            matches!(error, RequestError::DeadlineExceeded(_)),
            "{error:?}"
        );
    }

    #[test]
    fn allow_partial_accepts_what_reaches_min_coverage() {
        let outcomes = [
            answered(10),
            failed("down"),
            ShardOutcome::TimedOut,
            answered(5),
        ];
        assert!(enforce(&lenient(0.0), &outcomes).is_ok());
        assert!(enforce(&lenient(0.5), &outcomes).is_ok());
        let error = enforce(&lenient(0.75), &outcomes).unwrap_err();
        assert!(
            matches!(error, RequestError::ShardsUnavailable(_)),
            "{error:?}"
        );
        let coverage = coverage_of(&outcomes, 40);
        assert_eq!(
            (
                coverage.shards_total,
                coverage.shards_answered,
                coverage.shards_failed,
                coverage.shards_timed_out
            ),
            (4, 2, 1, 1)
        );
        assert_eq!(coverage.docs_covered, 15);
        assert_eq!(coverage.docs_total, 40);
        assert!(coverage.partial);
        let codes: Vec<_> = coverage
            .failures
            .iter()
            .map(|f| (f.shard_id, f.code.as_str()))
            .collect();
        assert_eq!(codes, vec![(1, "UNAVAILABLE"), (2, "DEADLINE_EXCEEDED")]);
    }

    #[test]
    fn no_answer_at_all_fails_even_with_allow_partial() {
        let error = enforce(&lenient(0.0), &[failed("down"), ShardOutcome::TimedOut]).unwrap_err();
        assert!(
            matches!(error, RequestError::ShardsUnavailable(_)),
            "{error:?}"
        );
        let error = enforce(&lenient(0.0), &[ShardOutcome::TimedOut]).unwrap_err();
        assert!(
            matches!(error, RequestError::DeadlineExceeded(_)),
            "{error:?}"
        );
    }

    #[test]
    fn shards_the_merger_did_not_need_do_not_fail_the_request() {
        let outcomes = [
            answered(10),
            ShardOutcome::NotNeeded {
                reason: "top k settled".into(),
            },
        ];
        assert!(enforce(&strict(), &outcomes).is_ok());
        let coverage = coverage_of(&outcomes, 0);
        assert_eq!(coverage.shards_timed_out, 1);
        assert!(coverage.partial);
        assert_eq!(coverage.failures[0].code, "CANCELLED");
    }
}
