"""Message-ID, In-Reply-To and References: ids normalised alike, placeholder
references dropped, and the synthetic id of a message without one."""

import hashlib
import re

from .headers import clean_text

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
_NOT_REFERENCES = frozenset(
    {"yes", "no", "null", "none", "nil", "undefined", "unknown", "true", "false", "0"}
)
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
