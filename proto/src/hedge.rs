//! The spelling of a fixed hedge delay, `fixed:<ms>`, shared by the root's
//! `--hedge` flag and the load generator's per-request `--hedge`.

use std::time::Duration;

/// The prefix of a fixed hedge policy.
pub const FIXED_PREFIX: &str = "fixed:";

/// The delay of `fixed:<ms>`: a positive number of milliseconds, fractions
/// allowed (`fixed:2`, `fixed:0.25`). `Err` says why `text` is not one;
/// callers that accept other policies too put their own list in front.
///
/// ```
/// use std::time::Duration;
/// use fanout_proto::hedge::parse_fixed_millis;
/// assert_eq!(parse_fixed_millis("fixed:0.25"), Ok(Duration::from_micros(250)));
/// assert!(parse_fixed_millis("fixed:0").is_err());
/// assert!(parse_fixed_millis("adaptive").is_err());
/// ```
pub fn parse_fixed_millis(text: &str) -> Result<Duration, String> {
    let millis = text
        .strip_prefix(FIXED_PREFIX)
        .ok_or_else(|| format!("{text:?} does not start with {FIXED_PREFIX}"))?;
    let value = millis
        .parse::<f64>()
        .map_err(|_| format!("{millis:?} is not a number of milliseconds"))?;
    if !(value > 0.0 && value.is_finite()) {
        return Err(format!("the delay must be above 0 ms, got {millis}"));
    }
    Duration::try_from_secs_f64(value / 1e3).map_err(|_| format!("{millis} ms is too long a delay"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_delays_are_positive_milliseconds() {
        assert_eq!(parse_fixed_millis("fixed:2"), Ok(Duration::from_millis(2)));
        assert_eq!(
            parse_fixed_millis("fixed:0.25"),
            Ok(Duration::from_micros(250))
        );
        for bad in [
            "fixed:",
            "fixed:0",
            "fixed:-1",
            "fixed:NaN",
            "fixed:inf",
            "fixed:1e300",
            "fixed:2ms",
            "2",
            "off",
        ] {
            assert!(parse_fixed_millis(bad).is_err(), "{bad}");
        }
    }
}
