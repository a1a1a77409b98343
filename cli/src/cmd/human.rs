//! Numbers and durations the way people read them: `63,956`, `1.2 ms`.

/// `1234567` as `1,234,567`.
pub fn thousands(value: u64) -> String {
    let mut groups = Vec::new();
    let mut rest = value;
    while rest >= 1_000 {
        groups.push(format!("{:03}", rest % 1_000));
        rest /= 1_000;
    }
    groups.push(rest.to_string());
    groups.reverse();
    groups.join(",")
}

/// Microseconds as `850 µs`, `1.2 ms` or `3.40 s`.
pub fn micros(value: u64) -> String {
    if value < 1_000 {
        format!("{value} µs")
    } else if value < 1_000_000 {
        format!("{:.1} ms", value as f64 / 1_000.0)
    } else {
        format!("{:.2} s", value as f64 / 1_000_000.0)
    }
}

/// `text` cut to at most `width` characters, an ellipsis marking the cut.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(63_956), "63,956");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn picks_a_readable_unit() {
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_234), "1.2 ms");
        assert_eq!(micros(3_400_000), "3.40 s");
    }

    #[test]
    fn truncates_on_characters_not_bytes() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("éééééééééé", 5), "éééé…");
        assert_eq!(truncate("video editor for", 7), "video…");
    }
}
