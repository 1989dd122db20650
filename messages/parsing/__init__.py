"""RFC 5322 / MIME parsing for the sync engine.

Built on the `compat32` policy with explicit decoding: `email.policy.default`
is about ten times slower on real mail (see README, Sync), and sync
speed is bounded by parsing. Every function in this package is total: hostile
or broken input yields replacement characters and defects, never an
exception, except `parse_message`'s `MessageRejected` for input that is not
mail at all or is over a configured limit (the sync quarantines such a
message and goes on).

Strings returned are safe for PostgreSQL text: no NUL, no lone surrogates.

`parse_message` (here) checks the input's shape and runs the parts:
`mime` (raw bytes to the MIME tree), `headers` (text cleaning, charsets,
encoded words, dates), `identifiers` (Message-ID, In-Reply-To, References),
`addresses`, `parts` (bodies and attachments), `html_text` (HTML as text,
snippets); `limits` and `results` hold the types it takes and returns.
"""

import re
from typing import cast

from .addresses import MAX_ADDRESS_HEADER, parse_addresses
from .headers import (
    clean_line,
    clean_text,
    decode_bytes,
    decode_header_value,
    first_header,
    parse_date,
    raw_headers,
    unraw,
)
from .html_text import MAX_HTML_TEXT_INPUT, html_to_text, make_snippet
from .identifiers import (
    MAX_MESSAGE_ID,
    SYNTHETIC_ID_DOMAIN,
    message_id,
    message_ids,
    reference_ids,
    synthetic_message_id,
)
from .limits import Limits, MessageRejected, parse_limits
from .mime import mime_tree
from .parts import walk_parts
from .results import Address, ParsedAttachment, ParsedMessage

__all__ = [
    "MAX_ADDRESS_HEADER",
    "MAX_HTML_TEXT_INPUT",
    "MAX_MESSAGE_ID",
    "SYNTHETIC_ID_DOMAIN",
    "Address",
    "Limits",
    "MessageRejected",
    "ParsedAttachment",
    "ParsedMessage",
    "clean_line",
    "clean_text",
    "decode_bytes",
    "decode_header_value",
    "html_to_text",
    "make_snippet",
    "message_id",
    "message_ids",
    "mime_tree",
    "parse_addresses",
    "parse_date",
    "parse_limits",
    "parse_message",
    "raw_headers",
    "reference_ids",
    "synthetic_message_id",
    "unraw",
]

# --- Entry point ----------------------------------------------------------------

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:", re.MULTILINE)  # obs-optional allows WSP


_LEADING_SPACE = re.compile(rb"\s*+")


def _check_shape(raw: bytes, limits: Limits) -> None:
    if not raw or raw.isspace():
        raise MessageRejected("empty message")
    if len(raw) > limits.max_message_bytes:
        raise MessageRejected(
            f"message of {len(raw)} bytes is over the {limits.max_message_bytes}-byte limit"
        )
    end = _HEADER_END.search(raw, 0, limits.max_header_bytes + 4)
    header = raw[: end.start()] if end else raw[: limits.max_header_bytes + 1]
    if end is None and len(raw) > limits.max_header_bytes:
        raise MessageRejected(f"header over the {limits.max_header_bytes}-byte limit")
    # Mail starts with header fields; a stray MIME body or binary blob does not.
    start = cast(re.Match[bytes], _LEADING_SPACE.match(raw)).end()  # `\s*+` matches any input
    first = raw[start : start + 1000]  # not raw.lstrip(): no copy of a large message
    if first.startswith(b"From ") and b"\n" in first:
        first = first.split(b"\n", 1)[1]
    if not _HEADER_LINE.match(first) or not _HEADER_LINE.search(header):
        raise MessageRejected("not an RFC 5322 message: it does not start with header fields")


_OBS_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]+:", re.MULTILINE)


def _normalise_obsolete_fields(raw: bytes) -> bytes:
    """`Name :` (RFC 5322 obs-optional) as `Name:`, in the header block only:
    Python's parser would take the whole header for body."""
    end = _HEADER_END.search(raw)
    head = raw[: end.start()] if end else raw
    if not _OBS_FIELD.search(head):
        return raw
    return _OBS_FIELD.sub(rb"\1:", head) + raw[len(head) :]


def parse_message(raw: bytes, limits: Limits | None = None) -> ParsedMessage:
    limits = limits or Limits()
    _check_shape(raw, limits)
    msg = mime_tree(_normalise_obsolete_fields(raw), limits)
    result = ParsedMessage()
    result.defects = [type(d).__name__ for d in msg.defects]
    headers = raw_headers(msg)

    def header(name: str) -> str | None:
        return first_header(headers, name.lower())

    result.message_id = message_id(header("Message-ID"))
    if not result.message_id:
        result.message_id = synthetic_message_id(raw)
        result.message_id_synthetic = True
    in_reply_to = reference_ids(header("In-Reply-To"))
    result.in_reply_to = in_reply_to[0] if in_reply_to else ""
    # The tail of References holds the nearest ancestors: a long one is cut
    # before it is split, so its ids cost at most `max_references`.
    references = header("References")
    if references and len(references) > limits.max_references * (MAX_MESSAGE_ID + 3):
        references = references[-limits.max_references * (MAX_MESSAGE_ID + 3) :]
    result.references = reference_ids(references)[-limits.max_references :]
    result.subject = clean_line(decode_header_value(header("Subject")), 10_000)
    senders = parse_addresses(headers.get("from"), limit=1)
    if senders:
        result.from_name = senders[0]["name"]
        result.from_address = senders[0]["address"]
    result.to = parse_addresses(headers.get("to"), limit=limits.max_addresses)
    result.cc = parse_addresses(headers.get("cc"), limit=limits.max_addresses)
    result.bcc = parse_addresses(headers.get("bcc"), limit=limits.max_addresses)
    result.reply_to = parse_addresses(headers.get("reply-to"), limit=limits.max_addresses)
    result.sent_at = parse_date(header("Date"))
    walk_parts(msg, result, limits)
    result.snippet = make_snippet(result.text_body)
    return result
