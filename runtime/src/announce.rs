//! A service announces the address it listens on as one line on stdout:
//!
//! ```text
//! fanout leaf listening on 127.0.0.1:40123
//! ```
//!
//! Services bind port 0 in tests and in `fanout up`; whoever started them
//! reads this line to learn the port. Logs go to stderr, so stdout stays clean.

use std::io::Write;
use std::net::SocketAddr;

const MARKER: &str = " listening on ";

/// Prints the announcement line for `role` (leaf, merger, root) and flushes.
pub fn announce_listening(role: &str, addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    // Writing to a closed stdout is not worth failing a server for.
    let _ = writeln!(stdout, "fanout {role}{MARKER}{addr}");
    let _ = stdout.flush();
}

/// Parses an announcement line, returning the role and the address.
pub fn parse_listening_line(line: &str) -> Option<(&str, SocketAddr)> {
    let rest = line.trim().strip_prefix("fanout ")?;
    let (role, addr) = rest.split_once(MARKER)?;
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
}
