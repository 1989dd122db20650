"""The MIME parts of a message walked into its text and HTML bodies and its
attachments, within the limits."""

import binascii
import quopri
import re
from email.message import Message as MimeMessage
from email.policy import compat32
from typing import cast

from .headers import (
    clean_line,
    clean_text,
    decode_bytes,
    decode_header_value,
    first_header,
    raw_headers,
    unraw,
)
from .html_text import html_to_text
from .identifiers import message_id
from .limits import Limits, MessageRejected
from .mime import SourcePart
from .results import ParsedAttachment, ParsedMessage

# Base64 that decodes the same with or without email's line joining and
# padding repair: alphabet and line breaks, then at most two "=".
_CLEAN_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]*+(?:=[\r\n]*+){0,2}")
_LARGE_PART = 64 * 1024


_CLEAN_BASE64_BYTES = re.compile(rb"[A-Za-z0-9+/\r\n]*+(?:=[\r\n]*+){0,2}")
_UUENCODE = ("x-uuencode", "uuencode", "uue", "x-uue")


def _source_bytes(part: SourcePart, limit: int | None) -> bytes | None:
    """What get_payload(decode=True) gives for a leaf still in the raw
    message (or its first `limit` bytes at least), from its bytes: no str of
    the part (four bytes a character once one is 8-bit). None where email's
    own decoding is needed (uuencode, base64 it repairs)."""
    cte = str(part.get("content-transfer-encoding", "")).lower()
    if cte == "base64":
        data = part.source_bytes()
        if (
            _CLEAN_BASE64_BYTES.fullmatch(data)
            and (len(data) - data.count(b"\r") - data.count(b"\n")) % 4 == 0
        ):
            return binascii.a2b_base64(data)
        return None
    if cte == "quoted-printable":
        # An encoded byte takes three characters at most, soft line breaks
        # three more every 76: four encoded bytes give one decoded at least.
        return quopri.decodestring(part.source_bytes(None if limit is None else 4 * limit + 4))
    if cte in _UUENCODE:
        return None
    return part.source_bytes(limit)


def _payload_bytes(part: MimeMessage, limit: int | None = None) -> bytes:
    """The part's decoded bytes (at least the first `limit` of them)."""
    if isinstance(part, SourcePart) and part.source is not None and not part.is_multipart():
        data = _source_bytes(part, limit)
        if data is not None:
            return data
    # The stored payload itself: get_payload() would copy and convert it.
    payload: str | list[MimeMessage] | None = part._payload  # type: ignore[attr-defined]
    if (
        isinstance(payload, str)
        and len(payload) > _LARGE_PART
        and str(part.get("content-transfer-encoding", "")).lower() == "base64"
        and _CLEAN_BASE64.fullmatch(payload)
        and (len(payload) - payload.count("\r") - payload.count("\n")) % 4 == 0
    ):
        # What get_payload(decode=True) returns for such a payload, without
        # its three whole-size copies (lines, joined, padded): a large
        # attachment costs its decoded size once.
        return binascii.a2b_base64(payload)
    try:
        decoded = part.get_payload(decode=True)
    except Exception:
        decoded = None
    if decoded is None:
        raw = part.get_payload()
        if isinstance(raw, str):
            return raw.encode("utf-8", "surrogateescape")
        return b""
    # decode=True gives None for a multipart and bytes for any other part
    # (the stubs allow a Message, which it never returns).
    return cast(bytes, decoded)


def _filename(part: MimeMessage, headers: dict[str, list[str]]) -> str:
    disposition = first_header(headers, "content-disposition") or ""
    content_type = first_header(headers, "content-type") or ""
    try:
        if disposition.isascii() and content_type.isascii():
            name = part.get_filename()
        else:
            # Parse the decoded header instead, so 8-bit names survive.
            probe = MimeMessage()
            probe["Content-Disposition"] = unraw(disposition)
            probe["Content-Type"] = unraw(content_type)
            name = probe.get_filename()
    except Exception:
        name = None
    if not name:
        return ""
    return clean_line(decode_header_value(name), 500).replace("/", "_").replace("\\", "_")


def _mime_type(part: MimeMessage) -> str:
    try:
        value = part.get_content_type()
    except Exception:
        return "application/octet-stream"
    value = clean_line(value, 255).lower()
    return (
        value
        if re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", value)
        else ("application/octet-stream")
    )


def _message_part_bytes(part: MimeMessage) -> bytes:
    if isinstance(part, SourcePart) and part.source is not None and part.is_multipart():
        # The enclosed message as it came, not regenerated from its tree.
        return part.source_bytes()
    inner = part.get_payload()
    if isinstance(inner, list) and inner:
        embedded = inner[0]
        if isinstance(embedded, MimeMessage):  # always, from the parser
            try:
                return embedded.as_bytes(policy=compat32)
            except Exception:  # an embedded message too broken to regenerate
                return str(embedded).encode("utf-8", "surrogateescape")
        return str(embedded).encode("utf-8", "surrogateescape")
    return _payload_bytes(part)


def _cut(data: bytes, limit: int) -> bytes:
    """`data`, or its first `limit` bytes cut at a line end (else before a
    UTF-8 continuation byte), so that the text still decodes as it would
    whole."""
    if len(data) <= limit:
        return data
    cut = data.rfind(b"\n", 0, limit)
    if cut < limit // 2:
        cut = limit
        while cut > 0 and 0x80 <= data[cut] < 0xC0:
            cut -= 1
    return data[:cut]


def walk_parts(msg: MimeMessage, result: ParsedMessage, limits: Limits) -> None:
    """Depth-first over the MIME tree with explicit limits; a message/rfc822
    attachment is kept whole, not descended into. The text and HTML bodies
    keep their first `limits.max_body_chars` characters each (the message
    itself is kept whole in the blob store)."""
    texts: list[str] = []
    htmls: list[str] = []
    # Characters kept of the text and HTML bodies, in parts as they come.
    left = {"text": limits.max_body_chars, "html": limits.max_body_chars}

    def add_body(part: MimeMessage, kind: str) -> None:
        chars = left[kind]
        if chars <= 0:
            return
        # A character takes four bytes at most (UTF-8, UTF-32).
        # One byte more than is kept: `_cut` sees the text goes on and cuts at
        # a line end or a character's start, never inside a character.
        data = _cut(_payload_bytes(part, 4 * chars + 5), 4 * chars + 4)
        text = decode_bytes(data, part.get_content_charset())
        if kind == "text":
            text = text.replace("\r\n", "\n")
        text = text[:chars]
        left[kind] -= len(text) + 2
        (texts if kind == "text" else htmls).append(text)

    parts = 0
    stack: list[tuple[MimeMessage, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        parts += 1
        if parts > limits.max_parts:
            raise MessageRejected(f"more than {limits.max_parts} MIME parts")
        if depth > limits.max_depth:
            raise MessageRejected(f"MIME nesting deeper than {limits.max_depth}")
        mime_type = _mime_type(part)
        headers = raw_headers(part)
        disposition = (first_header(headers, "content-disposition") or "").split(";")[0].strip().lower()
        if part.is_multipart() and not mime_type.startswith("message/"):
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend((child, depth + 1) for child in reversed(children))
            continue
        filename = _filename(part, headers)
        is_attachment = disposition == "attachment" or (
            filename and mime_type not in ("text/plain", "text/html")
        )
        if mime_type == "text/plain" and not is_attachment:
            add_body(part, "text")
            continue
        if mime_type == "text/html" and not is_attachment:
            add_body(part, "html")
            continue
        if part is msg and not part.is_multipart() and mime_type.startswith("text/"):
            add_body(part, "text")
            continue
        data = _message_part_bytes(part) if mime_type == "message/rfc822" else _payload_bytes(part)
        content_id = message_id(first_header(headers, "content-id"))
        result.attachments.append(
            ParsedAttachment(
                filename=filename or ("message.eml" if mime_type == "message/rfc822" else ""),
                mime_type=mime_type,
                content_id=clean_line(content_id, 998),
                is_inline=disposition == "inline" or (bool(content_id) and disposition != "attachment"),
                data=data,
            )
        )
    result.text_body = clean_text("\n\n".join(texts)).replace("\r\n", "\n")[: limits.max_body_chars]
    result.html_body = clean_text("\n".join(htmls))[: limits.max_body_chars]
    if result.html_body and not result.text_body.strip():
        # HTML-only mail: its text, so its words are indexed and previewed,
        # and the API's text_body is never empty for a message with a body.
        result.text_body = html_to_text(result.html_body)
