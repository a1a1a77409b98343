//! A service announces the address it listens on as one line on stdout:
//!
//! ```text
//! fanout leaf listening on 127.0.0.1:40123
//! ```
//!
//! Services bind port 0 in tests and in `fanout up`; whoever started them
//! reads this line to learn the port. Logs go to stderr, so stdout stays clean.
//!
//! A service with a metrics endpoint (`--metrics-listen`) prints a second
//! line after the first, so that readers of the first need not change:
//!
//! ```text
//! fanout leaf metrics on 127.0.0.1:40124
//! ```

use std::io::Write;
use std::net::SocketAddr;

const MARKER: &str = " listening on ";
const METRICS_MARKER: &str = " metrics on ";

/// Prints the announcement line for `role` (leaf, merger, root) and flushes.
pub fn announce_listening(role: &str, addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    // Writing to a closed stdout is not worth failing a server for.
    let _ = writeln!(stdout, "fanout {role}{MARKER}{addr}");
    let _ = stdout.flush();
}

/// Prints the metrics endpoint's line for `role`; call it after
/// [`announce_listening`].
pub fn announce_metrics(role: &str, addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "fanout {role}{METRICS_MARKER}{addr}");
    let _ = stdout.flush();
}

/// Parses an announcement line, returning the role and the address.
pub fn parse_listening_line(line: &str) -> Option<(&str, SocketAddr)> {
    parse_line(line, MARKER)
}

/// Parses a metrics endpoint line, returning the role and the address.
pub fn parse_metrics_line(line: &str) -> Option<(&str, SocketAddr)> {
    parse_line(line, METRICS_MARKER)
}

fn parse_line<'a>(line: &'a str, marker: &str) -> Option<(&'a str, SocketAddr)> {
    let rest = line.trim().strip_prefix("fanout ")?;
    let (role, addr) = rest.split_once(marker)?;
    Some((role, addr.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_announces() {
        let (role, addr) =
            parse_listening_line("fanout leaf listening on 127.0.0.1:4000\n").unwrap();
        assert_eq!(role, "leaf");
        assert_eq!(addr, "127.0.0.1:4000".parse().unwrap());
        assert!(parse_listening_line("some log line").is_none());
        assert!(parse_listening_line("fanout root listening on nowhere").is_none());
    }

    #[test]
    fn the_metrics_line_is_not_a_listening_line_and_parses_on_its_own() {
        let line = "fanout root metrics on 127.0.0.1:9100";
        assert!(parse_listening_line(line).is_none());
        let (role, addr) = parse_metrics_line(line).unwrap();
        assert_eq!(role, "root");
        assert_eq!(addr, "127.0.0.1:9100".parse().unwrap());
        assert!(parse_metrics_line("fanout root listening on 127.0.0.1:1").is_none());
        assert!(parse_metrics_line("fanout root metrics on later").is_none());
    }
}
