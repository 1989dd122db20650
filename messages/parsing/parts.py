"""The MIME parts of a message walked into its text and HTML bodies and its
attachments, within the limits."""

import binascii
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
from .results import ParsedAttachment, ParsedMessage

# Base64 that decodes the same with or without email's line joining and
# padding repair: alphabet and line breaks, then at most two "=".
_CLEAN_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]*+(?:=[\r\n]*+){0,2}")
_LARGE_PART = 64 * 1024


def _payload_bytes(part: MimeMessage) -> bytes:
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


def walk_parts(msg: MimeMessage, result: ParsedMessage, limits: Limits) -> None:
    """Depth-first over the MIME tree with explicit limits; a message/rfc822
    attachment is kept whole, not descended into."""
    texts: list[str] = []
    htmls: list[str] = []
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
            texts.append(decode_bytes(_payload_bytes(part), part.get_content_charset()))
            continue
        if mime_type == "text/html" and not is_attachment:
            htmls.append(decode_bytes(_payload_bytes(part), part.get_content_charset()))
            continue
        if part is msg and not part.is_multipart() and mime_type.startswith("text/"):
            texts.append(decode_bytes(_payload_bytes(part), part.get_content_charset()))
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
    result.text_body = clean_text("\n\n".join(texts)).replace("\r\n", "\n")
    result.html_body = clean_text("\n".join(htmls))
    if result.html_body and not result.text_body.strip():
        # HTML-only mail: its text, so its words are indexed and previewed,
        # and the API's text_body is never empty for a message with a body.
        result.text_body = html_to_text(result.html_body)
