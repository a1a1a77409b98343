//! Status codes as the gRPC specification spells them (`DEADLINE_EXCEEDED`),
//! for `ShardFailure.code`, reports and error messages; and the bounds on
//! what a status message may hold: a caller's input is quoted only up to
//! [`QUOTED_INPUT_CHARS`] characters ([`quote`]), and a whole message is cut
//! to [`MAX_MESSAGE_BYTES`] ([`bounded`]), so that no input can make an error
//! too large for the HTTP/2 trailers that carry it.

use std::fmt::Write as _;

use tonic::Code;

/// The most characters of a caller's input an error message quotes.
pub const QUOTED_INPUT_CHARS: usize = 64;
/// The longest status message a fanout service sends, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `input` quoted for an error message: as `{:?}` would, but cut after
/// [`QUOTED_INPUT_CHARS`] characters, with the length of the whole.
///
/// ```
/// use fanout_proto::status::quote;
/// assert_eq!(quote("title"), "\"title\"");
/// let long = "x".repeat(1000);
/// assert_eq!(quote(&long), format!("\"{}\"... (1000 bytes)", "x".repeat(64)));
/// ```
pub fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTED_INPUT_CHARS) {
        None => format!("{input:?}"),
        Some((cut, _)) => {
            let mut quoted = format!("{:?}", &input[..cut]);
            let _ = write!(quoted, "... ({} bytes)", input.len());
            quoted
        }
    }
}

/// `input` as it is when it is short printable ASCII (a request id, as the
/// root makes them), so that logs and spans of every process show the same
/// value to search for; [`quote`]d otherwise, so that no caller's text can
/// forge a log line.
///
/// ```
/// use fanout_proto::status::plain_or_quoted;
/// assert_eq!(plain_or_quoted("r-12ab"), "r-12ab");
/// assert_eq!(plain_or_quoted("a\nb"), "\"a\\nb\"");
/// ```
pub fn plain_or_quoted(input: &str) -> std::borrow::Cow<'_, str> {
    let plain = input.len() <= 128
        && !input.is_empty()
        && input.bytes().all(|byte| byte.is_ascii_graphic());
    if plain {
        std::borrow::Cow::Borrowed(input)
    } else {
        std::borrow::Cow::Owned(quote(input))
    }
}

/// Whether tonic ended a call because its own timeout expired: it reports
/// that as CANCELLED "Timeout expired" (a `tonic::TimeoutExpired` in the
/// error chain), which a caller must see as DEADLINE_EXCEEDED.
pub fn is_expired_timeout(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] bytes (at a character
/// boundary, with an ellipsis).
pub fn bounded(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut cut = MAX_MESSAGE_BYTES - 3;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str("...");
    message
}

/// The canonical upper-case name of a status code, as grpc-go and ghz print it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_grpc_spellings() {
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::from_i32(16)), "UNAUTHENTICATED");
    }

    #[test]
    fn quotes_are_cut_at_a_character_boundary() {
        let accents = "é".repeat(100);
        let quoted = quote(&accents);
        assert!(quoted.starts_with(&format!("\"{}\"...", "é".repeat(64))));
        assert!(quoted.ends_with("(200 bytes)"));
    }

    #[test]
    fn messages_are_bounded() {
        assert_eq!(bounded("short".to_owned()), "short");
        let long = bounded("ü".repeat(2000));
        assert!(long.len() <= MAX_MESSAGE_BYTES, "{}", long.len());
        assert!(long.ends_with("..."));
    }
}
