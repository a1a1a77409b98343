"""Small pieces of the contracts that leaves and mergers both need.

- ``ContractError``: a gRPC status to answer (code, message, optional retryability),
  raised by workload code and turned into the call's status in one place.
- ``unpack``: an ``Any`` to a message, checking the type URL first, with the Rust
  side's messages (proto/src/any.rs).
- ``quote``: user input in error messages, shortened.
- ``RETRYABLE_METADATA_KEY``: ``fanout-retryable: true|false`` in the trailing
  metadata overrides the default retryability of a code (leaf.proto).
"""

from __future__ import annotations

import json
from typing import Optional

import grpc
from google.protobuf.message import DecodeError

from fanout_py.stubs import type_url

RETRYABLE_METADATA_KEY = "fanout-retryable"
# Codes the root retries on another replica unless the metadata says otherwise.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)

# User input is quoted in error messages up to this many characters...
USER_INPUT_QUOTE_CHARS = 64
# ...and type URLs up to this many.
TYPE_URL_QUOTE_CHARS = 128
# The longest status message sent, in bytes.
MAX_MESSAGE_BYTES = 1024


class ContractError(Exception):
    """A status to answer. ``retryable`` (None = the code's default) is sent as
    ``fanout-retryable`` trailing metadata when set."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retryable: Optional[bool] = None
    ) -> None:
        message = bounded(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def abort(self, context: grpc.ServicerContext):
        """Ends the call with this status (raises, as context.abort does)."""
        if self.retryable is not None:
            context.set_trailing_metadata(
                ((RETRYABLE_METADATA_KEY, "true" if self.retryable else "false"),)
            )
        context.abort(self.code, self.message)


# grpcio reports a call without a deadline as one that far away (or as None).
_NO_DEADLINE_BEYOND_S = 10 * 365 * 24 * 3600


def time_remaining(context) -> Optional[float]:
    """Seconds left before the call's deadline, or None when it has no deadline."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_BEYOND_S:
        return None
    return remaining


def invalid(message: str) -> ContractError:
    return ContractError(grpc.StatusCode.INVALID_ARGUMENT, message)


def quote(text: str, limit: int = USER_INPUT_QUOTE_CHARS) -> str:
    """``text`` double-quoted for an error message, cut after ``limit`` characters and
    then followed by the whole length, as fanout's Rust services quote input:
    ``"xxxx"... (1000 bytes)``."""
    if len(text) > limit:
        size = len(text.encode("utf-8", "surrogatepass"))
        return json.dumps(text[:limit], ensure_ascii=False) + f"... ({size} bytes)"
    return json.dumps(text, ensure_ascii=False)


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes (with "..."), so that no input
    can make a status too large for the HTTP/2 trailers that carry it."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return message
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def unpack(payload, message_class):
    """Decodes ``payload`` (an Any) as ``message_class``; INVALID_ARGUMENT otherwise."""
    expected = type_url(message_class)
    if payload.type_url != expected:
        raise invalid(
            f"expected a payload of type {expected}, found "
            f"{quote(payload.type_url, TYPE_URL_QUOTE_CHARS)}"
        )
    try:
        return message_class.FromString(payload.value)
    except (DecodeError, ValueError) as error:
        raise invalid(f"payload of type {expected} does not decode: {error}") from None
