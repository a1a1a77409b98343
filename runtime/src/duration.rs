//! Durations as people write them in flags, fault specs and scenario files:
//! one parser, [`parse_duration`], so that `2s` means the same everywhere.
//!
//! A duration always carries its unit: `250ms`, `2s`, `1m`, fractions such as
//! `1.5s` or `0.25ms`, and sums such as `1m 30s` (humantime's syntax; units
//! `ns`, `us`/`µs`, `ms`, `s`, `m`/`min`, `h`, `d` and their longer
//! spellings). A bare number is refused rather than guessed: it used to mean
//! seconds in one place and milliseconds in another. Flags whose name carries
//! the unit (`--drain-delay-ms 5000`) are plain numbers and do not come here.

use std::time::Duration;

/// The accepted forms, for error messages.
pub const DURATION_FORMS: &str = "a number with a unit, such as 250ms, 2s, 1m or 1.5s";

/// Parses a duration with its unit (see the module docs); the error says
/// what was wrong and which forms are accepted.
///
/// ```
/// use std::time::Duration;
/// use fanout_runtime::duration::parse_duration;
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("5").unwrap_err().contains("no unit"));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("no duration given: expected {DURATION_FORMS}"));
    }
    if is_bare_number(text) {
        return Err(format!(
            "{text:?} has no unit: expected {DURATION_FORMS} (a bare number is not a duration)"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration ({error}): expected {DURATION_FORMS}"))
}

/// `5`, `0`, `1.5`, `-2`: digits (and a decimal point or a sign) alone.
fn is_bare_number(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().any(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_a_unit_parse() {
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("40ns", Duration::from_nanos(40)),
            ("0ms", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1m 30s", Duration::from_secs(90)),
            (" 10s ", Duration::from_secs(10)),
            ("500msec", Duration::from_millis(500)),
            ("3min", Duration::from_secs(180)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn fractions_with_a_unit_parse_exactly() {
        for (text, expected) in [
            ("1.5s", Duration::from_millis(1500)),
            ("0.25ms", Duration::from_micros(250)),
            ("0.5ms", Duration::from_micros(500)),
            ("2.5us", Duration::from_nanos(2500)),
            ("0.1s", Duration::from_millis(100)),
            ("1.25m", Duration::from_secs(75)),
            ("0.001s", Duration::from_millis(1)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn a_bare_number_is_refused_naming_the_accepted_forms() {
        for text in ["5", "0", "1.5", "250", "-2", "+3", ".5"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("no unit"), "{text:?}: {error}");
            assert!(error.contains("250ms, 2s, 1m or 1.5s"), "{text:?}: {error}");
        }
    }

    #[test]
    fn other_mistakes_are_refused_naming_the_accepted_forms() {
        for text in ["", "ten seconds", "5parsecs", "ms", "-1s", "1.s", "0.5ns"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("250ms, 2s, 1m or 1.5s"), "{text:?}: {error}");
        }
    }
}
