"""RFC 5322 / MIME parsing for the sync engine.

Built on the `compat32` policy with explicit decoding: `email.policy.default`
is about ten times slower on real mail (see README, Benchmarks), and sync
speed is bounded by parsing. Every function here is total: hostile or broken
input yields replacement characters and defects, never an exception, except
`parse_message`'s `MessageRejected` for input that is not mail at all or is
over a configured limit (the sync quarantines such a message and goes on).

Strings returned are safe for PostgreSQL text: no NUL, no lone surrogates.
"""

import binascii
import codecs
import email
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import decode_header
from email.message import Message as MimeMessage
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from html import unescape

from django.conf import settings

# --- Limits ---------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 50 * 1024 * 1024
    max_header_bytes: int = 256 * 1024
    max_parts: int = 1000
    max_depth: int = 30


def parse_limits() -> Limits:
    """The limits the settings give (`MAIL_MAX_*`): the sync's and `reparse`'s."""
    return Limits(
        max_message_bytes=settings.MAIL_MAX_MESSAGE_BYTES,
        max_header_bytes=settings.MAIL_MAX_HEADER_BYTES,
        max_parts=settings.MAIL_MAX_PARTS,
        max_depth=settings.MAIL_MAX_MIME_DEPTH,
    )


class MessageRejected(Exception):
    """The input cannot be stored as a message; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- Results --------------------------------------------------------------------


@dataclass
class ParsedAttachment:
    filename: str
    mime_type: str
    content_id: str
    is_inline: bool
    data: bytes
    sha256: str = ""

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()


@dataclass
class ParsedMessage:
    message_id: str = ""
    # True when the message has no Message-ID and `message_id` is made up.
    message_id_synthetic: bool = False
    in_reply_to: str = ""
    references: list[str] = field(default_factory=list)
    subject: str = ""
    from_name: str = ""
    from_address: str = ""
    to: list[dict] = field(default_factory=list)
    cc: list[dict] = field(default_factory=list)
    bcc: list[dict] = field(default_factory=list)
    reply_to: list[dict] = field(default_factory=list)
    sent_at: datetime | None = None
    text_body: str = ""
    html_body: str = ""
    snippet: str = ""
    attachments: list[ParsedAttachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


# --- Text cleaning --------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WS = re.compile(r"\s+")


def clean_text(value: str) -> str:
    """Valid UTF-8 without NUL: lone surrogates (undecodable bytes smuggled in
    by surrogateescape) become U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def clean_line(value: str, max_length: int = 998) -> str:
    """A header-like single line: controls and runs of white space folded."""
    return _WS.sub(" ", _CONTROL.sub(" ", clean_text(value))).strip()[:max_length]


# Charsets seen in the wild under names Python does not know.
_CHARSET_ALIASES = {
    "unknown-8bit": "latin-1",
    "x-unknown": "latin-1",
    "unknown": "latin-1",
    "default": "latin-1",
    "us-ascii": "latin-1",  # 8-bit bytes mislabelled as ASCII are the common case
    "ascii": "latin-1",
    "iso-8859-8-i": "iso-8859-8",
    "x-user-defined": "latin-1",
    "utf8": "utf-8",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "windows-874": "cp874",
    "x-mac-roman": "mac-roman",
}


def _codec(charset: str | None) -> str:
    if not charset:
        return "utf-8"
    name = charset.strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        codecs.lookup(name)
    except LookupError:
        return "utf-8"
    # Refuse codecs that are not text encodings (base64_codec, rot13, ...).
    if codecs.lookup(name).name.endswith("_codec") or name in {"rot13", "rot_13"}:
        return "utf-8"
    return name


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode a body or header chunk; when the label is absent or wrong, try
    UTF-8 first, then cp1252 (which decodes Latin-1 mail too)."""
    codec = _codec(charset)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    except Exception:  # codecs with broken state machines (e.g. some CJK on garbage)
        codec = "utf-8"
    for fallback in ("utf-8", "cp1252"):
        if fallback != codec:
            try:
                return data.decode(fallback)
            except UnicodeDecodeError:
                continue
    return data.decode(codec, "replace") if codec != "utf-8" else data.decode("utf-8", "replace")


def unraw(value: str) -> str:
    """A raw header value as text. compat32 keeps 8-bit header bytes as
    surrogate escapes; they are UTF-8 in modern mail and cp1252 in old."""
    if value.isascii():
        return value
    return decode_bytes(value.encode("utf-8", "surrogateescape"), None)


def decode_header_value(value) -> str:
    """RFC 2047 encoded words in any charset, and raw 8-bit headers (UTF-8
    or Latin-1), to text. Never raises."""
    if value is None:
        return ""
    value = unraw(str(value))
    if "=?" not in value:
        return clean_text(value)
    try:
        chunks = decode_header(value)
    except Exception:
        return clean_text(value)
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:
            # decode_header hands back the text between encoded words this way
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            out.append(decode_bytes(chunk, charset))
    # decode_header drops the white space between an encoded word and plain
    # text inconsistently; joining is what every mail client does.
    return clean_text("".join(out) if len(out) > 1 else (out[0] if out else ""))


# --- Headers --------------------------------------------------------------------

# Message-IDs are read leniently, as Dovecot and notmuch do, so that real mail that breaks RFC
# 5322 (no "@", spaces, quoted local parts, no brackets, folded mid-id) keeps
# its id: each id is the text from a "<" to the next ">" (or to the end of an
# unclosed one), and a header without any "<" is one id, its whole value; all
# white space and control characters are removed. Message-ID, In-Reply-To
# and References are read alike, so a reply finds its parent however odd the
# id. An id longer than MAX_MESSAGE_ID characters keeps its first characters
# and a SHA-256 of the whole (deterministic, so the message and every
# reference to it agree), so it fits `ThreadRef.message_id` and a b-tree index
# entry even when hostile mail makes it long and multi-byte.

MAX_MESSAGE_ID = 250
_LONG_ID_PREFIX = MAX_MESSAGE_ID - 65  # then "~" and 64 hex digits
_BRACKETED_ID = re.compile(r"<([^>]*+)(?:>|$)")
_ID_NOISE = re.compile(r"[\s\x00-\x1f\x7f]++")
# References that name no message: git send-email's `--in-reply-to=yes` bug
# sends `<yes>`, and broken clients write placeholders, any of which would
# chain unrelated threads together. Only ignored as references (compared
# case-insensitively); a Message-ID `<yes>` is still that message's id.
_NOT_REFERENCES = frozenset({"yes", "no", "null", "none", "nil", "undefined", "unknown", "true", "false", "0"})
SYNTHETIC_ID_DOMAIN = "synthetic.invalid"


def _normalise_id(text: str) -> str:
    text = _ID_NOISE.sub("", text)
    if len(text) > MAX_MESSAGE_ID:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        text = f"{text[:_LONG_ID_PREFIX]}~{digest}"
    return text


def message_ids(value: str | None) -> list[str]:
    """The ids of a Message-ID, In-Reply-To or References header, normalised
    (see above), in order, de-duplicated; the first is the Message-ID's."""
    if not value:
        return []
    value = clean_text(value)
    if "<" not in value:
        bare = _normalise_id(value)
        return [bare] if bare else []
    seen: dict[str, None] = {}
    for match in _BRACKETED_ID.finditer(value):
        normalised = _normalise_id(match.group(1))
        if normalised:
            seen.setdefault(normalised, None)
    return list(seen)


def message_id(value: str | None) -> str:
    """The id of a Message-ID (or Content-ID) header, or ""."""
    ids = message_ids(value)
    return ids[0] if ids else ""


def reference_ids(value: str | None) -> list[str]:
    """The ids of an In-Reply-To or References header that name messages."""
    return [i for i in message_ids(value) if i.lower() not in _NOT_REFERENCES]


def synthetic_message_id(raw: bytes) -> str:
    """The stable id of a message without one: from its raw bytes, so the same
    message gets the same id on every sync and after a UIDVALIDITY change."""
    return f"sha256-{hashlib.sha256(raw).hexdigest()}@{SYNTHETIC_ID_DOMAIN}"


# `Name <a@b>`, `"Quoted, Name" <a@b>` or `a@b`, then a comma or the end. Lists
# made only of these (nearly all mail) skip getaddresses' character-by-
# character parser, the slowest step of parsing; anything else (groups,
# comments, odd quoting) goes through getaddresses.
_ADDRESS_ITEM = re.compile(
    # Possessive quantifiers throughout: no backtracking, so hostile input
    # (a header of 250 KB of spaces) costs linear time, not minutes.
    r"""\s*+(?:
        (?:"(?P<qname>(?:[^"\\]|\\.)*+)"\s*+|(?P<name>[^",<>;:@()\[\]\\]*+))<(?P<addr>[^<>\s,;"()\\]*+)>
      | (?P<bare>[^<>\s,;"()\\@]++@[^<>\s,;"()\\]++)
    )\s*+(?:,|$)""",
    re.VERBOSE,
)
# Longer address headers are cut: no real header needs more.
MAX_ADDRESS_HEADER = 16 * 1024


def _split_addresses(value: str) -> list[tuple[str, str]]:
    pairs = []
    position, end = 0, len(value)
    while position < end:
        match = _ADDRESS_ITEM.match(value, position)
        if match is None or match.end() == position:
            return getaddresses([value])
        if match.group("bare"):
            pairs.append(("", match.group("bare")))
        else:
            quoted = match.group("qname")
            name = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group("name").strip()
            pairs.append((name, match.group("addr")))
        position = match.end()
    return pairs


def parse_addresses(values: list[str] | None) -> list[dict]:
    """[{"name": ..., "address": ...}] from one or more address headers.
    Display names are decoded after splitting, so an encoded comma inside a
    name cannot split an address."""
    if not values:
        return []
    try:
        pairs = [pair for v in values for pair in _split_addresses(clean_text(unraw(v[:MAX_ADDRESS_HEADER])))]
    except Exception:
        return []
    result = []
    for name, address in pairs:
        address = clean_line(address, 320)
        name = clean_line(decode_header_value(name), 500)
        if not address and not name:
            continue
        result.append({"name": name, "address": address})
    return result


def parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(clean_line(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# --- Bodies ---------------------------------------------------------------------

# HTML bodies are read as text for the search index, previews and the text
# body of HTML-only mail. At most this many characters of HTML are read (the
# index reads 100,000 characters of text; HTML is rarely under a fifth markup).
MAX_HTML_TEXT_INPUT = 500_000

# Elements whose content is never shown, dropped with it; comments too.
_HIDDEN_START = re.compile(r"<(?:(script|style|title)\b|!--)", re.IGNORECASE)
_HIDDEN_END = {
    name: re.compile(rf"</{name}\b[^>]*+>?", re.IGNORECASE) for name in ("script", "style", "title")
}
# The rest of a tag: attributes (a quoted value may hold ">") to the ">".
_TAG_REST = r"""(?:[^>"']++|"[^"]*+"|'[^']*+')*+>?"""
# A tag: "<" then a letter, "/", "!" or "?" (any other "<" is text), to the
# next ">" or the end. Block-level ones are line breaks, cells are spaces,
# the rest (inline) are nothing: "<b>H</b>ello" is one word.
_BLOCK_TAG = re.compile(
    r"<(?:/?(?:address|article|aside|blockquote|body|br|caption|center|dd|div|dl|dt|fieldset|figcaption"
    r"|figure|footer|form|h[1-6]|header|hr|html|li|main|nav|ol|p|pre|section|table|tbody|tfoot|thead|tr|ul)"
    r"(?![a-z0-9:-])" + _TAG_REST + ")",
    re.IGNORECASE,
)
_CELL_TAG = re.compile(r"</?t[dh](?![a-z0-9:-])" + _TAG_REST, re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[a-zA-Z!?]" + _TAG_REST)
# Characters that render as nothing: zero-width spaces and joiners, soft
# hyphens, byte order marks (newsletters pad their preheaders with them).
_INVISIBLE = re.compile("[\u00ad\u034f\u180e\u200b-\u200f\u2060-\u2064\ufeff]++")


def _drop_hidden(html: str) -> str:
    """Scripts, styles, titles and comments out, content and all, in one
    linear pass: an unclosed one hides the rest, as in a browser."""
    found = _HIDDEN_START.search(html)
    if found is None:
        return html
    out: list[str] = []
    position, end = 0, len(html)
    while found is not None:
        out.append(html[position : found.start()])
        name = found.group(1)
        if name:
            closing = _HIDDEN_END[name.lower()].search(html, found.end())
            position = end if closing is None else closing.end()
        else:
            closing = html.find("-->", found.end())
            position = end if closing < 0 else closing + 3
        found = _HIDDEN_START.search(html, position)
    out.append(html[position:])
    return "".join(out)


def html_to_text(html: str) -> str:
    """The text of an HTML body, as search and previews need it: hidden
    elements out, block elements as line breaks, every entity decoded,
    white space folded. Linear in the input, cut at MAX_HTML_TEXT_INPUT."""
    text = _drop_hidden(html[:MAX_HTML_TEXT_INPUT])
    if "<" in text:
        text = _ANY_TAG.sub("", _CELL_TAG.sub(" ", _BLOCK_TAG.sub("\n", text)))
    if "&" in text:
        text = unescape(text)
    if not text.isascii():
        text = _INVISIBLE.sub("", text)
    # White space folded, and empty lines out (str.split: C speed, every
    # Unicode space, controls included).
    lines = (" ".join(line.split()) for line in _CONTROL.sub(" ", text).split("\n"))
    return clean_text("\n".join(line for line in lines if line))


def make_snippet(text: str, length: int = 200) -> str:
    return _WS.sub(" ", text[: length * 4]).strip()[:length]


# Base64 that decodes the same with or without email's line joining and
# padding repair: alphabet and line breaks, then at most two "=".
_CLEAN_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]*+(?:=[\r\n]*+){0,2}")
_LARGE_PART = 64 * 1024


def _payload_bytes(part: MimeMessage) -> bytes:
    payload = part._payload
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
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        raw = part.get_payload()
        if isinstance(raw, str):
            return raw.encode("utf-8", "surrogateescape")
        return b""
    return payload


def raw_headers(part: MimeMessage) -> dict[str, list[str]]:
    """Header values as received (8-bit bytes as surrogate escapes), by
    lower-case name. compat32's `get` would turn those into `Header` objects
    whose text has already lost the bytes."""
    headers: dict[str, list[str]] = {}
    for name, value in part.raw_items():
        headers.setdefault(name.lower(), []).append(value if isinstance(value, str) else str(value))
    return headers


def _first(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _filename(part: MimeMessage, headers: dict[str, list[str]]) -> str:
    disposition = _first(headers, "content-disposition") or ""
    content_type = _first(headers, "content-type") or ""
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
        try:
            return inner[0].as_bytes(policy=compat32)
        except Exception:  # an embedded message too broken to regenerate
            return str(inner[0]).encode("utf-8", "surrogateescape")
    return _payload_bytes(part)


def _walk(msg: MimeMessage, result: ParsedMessage, limits: Limits) -> None:
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
        disposition = (_first(headers, "content-disposition") or "").split(";")[0].strip().lower()
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
        content_id = message_id(_first(headers, "content-id"))
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
    start = _LEADING_SPACE.match(raw).end()
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


# --- The MIME tree -----------------------------------------------------------------

_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")
_MAX_FAST_DEPTH = 50


class _Unusual(Exception):
    """The fast tree builder declines; the FeedParser takes over."""


def _strip_eol(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def _fast_part(text: str, start: int, end: int, depth: int) -> MimeMessage:
    """One part of `text[start:end]`: headers, then its body or subparts.
    Mirrors FeedParser._parsegen for input without defects."""
    if depth > _MAX_FAST_DEPTH:
        raise _Unusual
    msg = MimeMessage(policy=compat32)
    if text.startswith("\n", start, end):
        body = start + 1
    elif text.startswith("\r\n", start, end):
        body = start + 2
    else:
        # The header block ends at the first empty line; every line before
        # it must be a field or a continuation, else the FeedParser's
        # recovery rules apply.
        stop = text.find("\n\n", start, end)
        crlf = text.find("\n\r\n", start, end)
        if stop < 0 or (0 <= crlf < stop):
            stop = crlf
            body = crlf + 3
        else:
            body = stop + 2
        if stop < 0:
            raise _Unusual
        field: list[str] = []
        for line in text[start : stop + 1].split("\n")[:-1]:
            line += "\n"
            if line[0] in " \t":
                if not field:
                    raise _Unusual
                field.append(line)
                continue
            if not _HEADER_NAME.match(line):
                raise _Unusual  # "From " lines, bad names: the FeedParser's defect handling
            if field:
                msg._headers.append(compat32.header_source_parse(field))
            field = [line]
        if field:
            msg._headers.append(compat32.header_source_parse(field))
    maintype = msg.get_content_maintype()
    if maintype == "message":
        raise _Unusual
    if maintype != "multipart":
        msg._payload = text[body:end]
        return msg
    boundary = msg.get_boundary()
    if boundary is None or msg.get_content_type() == "multipart/digest":
        raise _Unusual
    if str(msg.get("content-transfer-encoding", "8bit")).lower() not in ("7bit", "8bit", "binary"):
        raise _Unusual
    marks = _boundary_lines(text, body, end, "--" + boundary)
    if not marks or marks[0][2] or not marks[-1][2]:
        raise _Unusual  # no start or no close boundary
    if marks[0][0] > body:
        msg.preamble = _strip_eol(text[body : marks[0][0]])
    for (_, part_start, _), (part_end, _, _) in itertools.pairwise(marks):
        if part_start == part_end:
            raise _Unusual  # repeated boundary lines
        child = _fast_part(text, part_start, part_end, depth + 1)
        # RFC 2046: the line break before a boundary belongs to the boundary.
        if child.get_content_maintype() == "multipart":
            child.epilogue = _strip_eol(child.epilogue) if child.epilogue else None
        else:
            child._payload = _strip_eol(child._payload)
        msg.attach(child)
    msg.epilogue = text[marks[-1][1] : end]
    return msg


def _boundary_lines(text: str, start: int, end: int, separator: str) -> list[tuple[int, int, bool]]:
    """(line start, next line's start, is the close boundary) of each
    boundary line in text[start:end], up to the close boundary: a line that is
    the separator, optionally `--`, then only spaces and tabs."""
    marks = []
    position = start
    while (found := text.find(separator, position, end)) >= 0:
        if found == start or text[found - 1] == "\n":
            newline = text.find("\n", found, end)
            line_end = end if newline < 0 else newline + 1
            rest = text[found + len(separator) : line_end].rstrip("\r\n")
            close = rest.startswith("--")
            if not (rest[2:] if close else rest).strip(" \t"):
                marks.append((found, line_end, close))
                if close:
                    break
                position = line_end
                continue
        position = found + 1
    return marks


def mime_tree(raw: bytes) -> MimeMessage:
    """The compat32 message tree of `raw`, as `email.message_from_bytes`
    builds it. Well-formed mail (nearly all) is split with `str.find` instead
    of the FeedParser's line-by-line loop and per-boundary regex, about ten
    times faster and without a str per line; anything unusual (defects, a
    lone CR, message/* parts, digests, repeated boundaries) goes through
    the FeedParser, whose recovery rules stay the reference."""
    text = raw.decode("ascii", "surrogateescape")
    if "\r" not in text or text.count("\r") == text.count("\r\n"):
        try:
            return _fast_part(text, 0, len(text), 0)
        except _Unusual:
            pass
    return email.message_from_bytes(raw, policy=compat32)


def parse_message(raw: bytes, limits: Limits | None = None) -> ParsedMessage:
    limits = limits or Limits()
    _check_shape(raw, limits)
    msg = mime_tree(_normalise_obsolete_fields(raw))
    result = ParsedMessage()
    result.defects = [type(d).__name__ for d in msg.defects]
    headers = raw_headers(msg)

    def header(name: str) -> str | None:
        return _first(headers, name.lower())

    result.message_id = message_id(header("Message-ID"))
    if not result.message_id:
        result.message_id = synthetic_message_id(raw)
        result.message_id_synthetic = True
    in_reply_to = reference_ids(header("In-Reply-To"))
    result.in_reply_to = in_reply_to[0] if in_reply_to else ""
    result.references = reference_ids(header("References"))[-100:]
    result.subject = clean_line(decode_header_value(header("Subject")), 10_000)
    senders = parse_addresses(headers.get("from"))
    if senders:
        result.from_name = senders[0]["name"]
        result.from_address = senders[0]["address"]
    result.to = parse_addresses(headers.get("to"))
    result.cc = parse_addresses(headers.get("cc"))
    result.bcc = parse_addresses(headers.get("bcc"))
    result.reply_to = parse_addresses(headers.get("reply-to"))
    result.sent_at = parse_date(header("Date"))
    _walk(msg, result, limits)
    result.snippet = make_snippet(result.text_body)
    return result
