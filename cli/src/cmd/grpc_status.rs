//! gRPC errors as the command line prints them: `error: UNAVAILABLE: message`.

use tonic::{Code, Status};

/// The canonical name of a status code, as in the gRPC spec (`DEADLINE_EXCEEDED`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

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
