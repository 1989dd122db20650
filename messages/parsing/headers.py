"""Header and text decoding: strings safe for PostgreSQL (`clean_text`,
`clean_line`), charsets as found in the wild, RFC 2047 encoded words, raw
8-bit headers, dates, and a part's headers as received."""

import codecs
import re
from datetime import UTC, datetime
from email.header import decode_header
from email.message import Message as MimeMessage
from email.utils import parsedate_to_datetime

CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
WHITE_SPACE = re.compile(r"\s+")


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
    return WHITE_SPACE.sub(" ", CONTROL_CHARACTERS.sub(" ", clean_text(value))).strip()[:max_length]


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


def decode_header_value(value: str | None) -> str:
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


def raw_headers(part: MimeMessage) -> dict[str, list[str]]:
    """Header values as received (8-bit bytes as surrogate escapes), by
    lower-case name. compat32's `get` would turn those into `Header` objects
    whose text has already lost the bytes."""
    headers: dict[str, list[str]] = {}
    for name, value in part.raw_items():
        headers.setdefault(name.lower(), []).append(value if isinstance(value, str) else str(value))
    return headers


def first_header(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None
