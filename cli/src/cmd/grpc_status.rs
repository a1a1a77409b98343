//! gRPC errors as the command line prints them: `error: UNAVAILABLE: message`.

use fanout_proto::status::code_name;
use tonic::Status;

/// `<CODE>: <message>`, the message left out when empty.
pub fn describe(status: &Status) -> String {
    let name = code_name(status.code());
    if status.message().is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {}", status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_status_with_its_canonical_code_name() {
        let status = Status::deadline_exceeded("2 of 4 shards timed out");
        assert_eq!(
            describe(&status),
            "DEADLINE_EXCEEDED: 2 of 4 shards timed out"
        );
        assert_eq!(describe(&Status::unavailable("")), "UNAVAILABLE");
    }
}
