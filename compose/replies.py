"""Replies and forwards of a stored message: what a new draft starts with.

`reply_build` and `forward_build` read a `messages.models.Message` and return
a `ReplyDraft` (recipients, subject, threading headers, quoted bodies); the
compose services copy it into the draft, where the user's own fields win.
No database access here: the caller has already checked the message is one
of the user's own (`compose.selectors`), and gathers a forward's attachments
itself (`messages.selectors.message_attachments`).

Decisions:

- Subjects: `reply_subject` drops any leading run of reply prefixes (`Re:`,
  `RE:`, `Re[2]:`, `Re(2):`, and the common translations `AW:`, `SV:`,
  `Antw:`, full-width colon too) and puts one `Re: ` in front; a forward
  prefix is kept (`Fwd: x` -> `Re: Fwd: x`, as most clients do).
  `forward_subject` does the same with `Fwd:`/`Fw:`/`WG:` and keeps reply
  prefixes (`Re: x` -> `Fwd: Re: x`).
- Recipients of a reply: the original's Reply-To, else its From. When the
  original is the user's own (a message in Sent: From is one of
  `own_addresses`) and has no Reply-To, the reply goes to its To instead,
  as mail clients do. Reply-all adds the original's To and Cc as Cc. The
  user's own addresses (case-insensitive, IDNA-normalised) are left out of
  Cc, and of To unless that would leave it empty; nobody is listed twice.
  Addresses that do not pass `compose.addresses.mailbox_parse` (the parser
  stores what mail holds, valid or not) are left out; a display name that
  does not pass is dropped, the address kept.
- In-Reply-To is the original's Message-ID. References are the original's
  References (or, without them, its In-Reply-To; RFC 5322 §3.6.4) and then
  its Message-ID, each once, at most `MAX_REFERENCES` ids and
  `MAX_REFERENCES_CHARS` characters: the first (the thread's root) and the
  newest are kept, the middle dropped. A synthetic Message-ID
  (`message_id_synthetic`: we made it up from the bytes, no other client
  knows it) is never written, nor is an id that is not an RFC 5322 msg-id
  (`dot-atom-text@dot-atom-text` or `dot-atom-text@[literal]`: no quotes,
  comments, backslashes, commas or spaces, which a reader would split or
  unquote differently from the sender).
- A forward has no In-Reply-To and no recipients; its References are the
  original's Message-ID alone (when real), so the forward joins the
  original's thread in our own store (the issue asks it to) without
  claiming to answer it.
- Quoted text: "On <Date>, <Name> <addr> wrote:" (the date as RFC 5322
  writes it: unambiguous in every locale) then the original's text, each
  line behind "> " (">" before a line already quoted). Quoted HTML: the
  same attribution and the original's HTML through the reading sanitiser
  (`messages.sanitize.sanitize_html`, remote images and cid: images
  dropped) in a `<blockquote>`, or its text escaped when it has no HTML.
  Both bodies start with an empty line for the user to write in. An
  original body longer than `MAX_QUOTED_CHARS` is cut with a note; the HTML
  of an original without text is cut at `MAX_QUOTED_HTML_CHARS` before it
  is converted to text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from html import escape

from messages.models import Message
from messages.sanitize import sanitize_html

from .addresses import MAX_HEADER_TEXT_LENGTH, AddressError, mailbox_parse
from .mime import text_from_html

__all__ = [
    "MAX_QUOTED_CHARS",
    "MAX_QUOTED_HTML_CHARS",
    "MAX_REFERENCES",
    "MAX_REFERENCES_CHARS",
    "ReplyDraft",
    "forward_build",
    "forward_subject",
    "references_trim",
    "reply_build",
    "reply_subject",
]

MAX_REFERENCES = 20
MAX_REFERENCES_CHARS = 4000
MAX_QUOTED_CHARS = 500_000
MAX_QUOTED_HTML_CHARS = 2 * MAX_QUOTED_CHARS  # of an HTML-only original, converted to text
FORWARD_SEPARATOR = "---------- Forwarded message ---------"

_COLON = r"\s*[:\uff1a]"
_REPLY_PREFIXES = re.compile(
    rf"^(?:\s*(?:re|aw|sv|antw)(?:\s*(?:\[\d+\]|\(\d+\)))?{_COLON}\s*)+", re.IGNORECASE
)
_FORWARD_PREFIXES = re.compile(
    rf"^(?:\s*(?:fwd|fw|wg)(?:\s*(?:\[\d+\]|\(\d+\)))?{_COLON}\s*)+", re.IGNORECASE
)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# msg-id of RFC 5322 §3.6.4 without its brackets: id-left "@" id-right, the
# left a dot-atom-text, the right a dot-atom-text or a no-fold-literal.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM_TEXT = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_NO_FOLD_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]*\]"
_ID = re.compile(rf"{_DOT_ATOM_TEXT}@(?:{_DOT_ATOM_TEXT}|{_NO_FOLD_LITERAL})")
_MAX_ID = 993  # "<" id ">" within a 998-octet line, with room for a separator


@dataclass
class ReplyDraft:
    to: list[dict[str, str]] = field(default_factory=list)
    cc: list[dict[str, str]] = field(default_factory=list)
    subject: str = ""
    in_reply_to_header: str = ""  # "<id>" or ""
    references_header: str = ""  # "<id> <id> ..." or ""
    quoted_text: str = ""
    quoted_html: str = ""


# --- Subjects ----------------------------------------------------------------------


def _subject_clean(subject: str) -> str:
    """A stored subject as a header may carry it: controls as spaces, white
    space folded, short enough for a prefix."""
    text = " ".join(_UNPRINTABLE.sub(" ", subject or "").split())
    return text[: MAX_HEADER_TEXT_LENGTH - 10]


def reply_subject(subject: str) -> str:
    """`Re: ` and the subject without its leading reply prefixes (see the
    module docstring): "Re: Re: x" -> "Re: x", "Fwd: x" -> "Re: Fwd: x"."""
    rest = _REPLY_PREFIXES.sub("", _subject_clean(subject))
    return f"Re: {rest}".rstrip()


def forward_subject(subject: str) -> str:
    """`Fwd: ` and the subject without its leading forward prefixes:
    "Fwd: Fw: x" -> "Fwd: x", "Re: x" -> "Fwd: Re: x"."""
    rest = _FORWARD_PREFIXES.sub("", _subject_clean(subject))
    return f"Fwd: {rest}".rstrip()


# --- Threading headers ---------------------------------------------------------------


def _writable_ids(ids: Iterable[str]) -> list[str]:
    """The ids that can be written back as `<id>`, each once, in order."""
    seen: dict[str, None] = {}
    for value in ids:
        text = (value or "").strip().strip("<>")
        if len(text) <= _MAX_ID and _ID.fullmatch(text):
            seen.setdefault(text, None)
    return list(seen)


def references_trim(ids: list[str]) -> list[str]:
    """At most MAX_REFERENCES ids and MAX_REFERENCES_CHARS characters
    written: the first (the root) and the newest kept, the middle dropped
    (RFC 5322 §3.6.4 lets a References field be shortened so)."""
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    while len(ids) > 2 and sum(len(i) + 3 for i in ids) > MAX_REFERENCES_CHARS:
        ids = [ids[0], *ids[2:]]
    return ids


def _own_id(original: Message) -> str:
    if original.message_id_synthetic:
        return ""
    ids = _writable_ids([original.message_id])
    return ids[0] if ids else ""


def _references_header(ids: list[str]) -> str:
    return " ".join(f"<{i}>" for i in references_trim(ids))


# --- Recipients ----------------------------------------------------------------------


def _mailbox(value: Mapping[str, object]) -> dict[str, str] | None:
    """A stored {"name", "address"} checked as the API checks input; a
    name that fails is dropped, an address that fails drops the mailbox."""
    name = value.get("name")
    address = value.get("address")
    if not isinstance(address, str):
        return None
    try:
        return mailbox_parse({"name": name if isinstance(name, str) else "", "address": address})
    except AddressError:
        pass
    try:
        return mailbox_parse({"name": "", "address": address})
    except AddressError:
        return None


def _mailboxes(values: object) -> list[dict[str, str]]:
    if not isinstance(values, list):
        return []
    result = []
    for value in values:
        if isinstance(value, Mapping):
            mailbox = _mailbox(value)
            if mailbox is not None:
                result.append(mailbox)
    return result


def _own_keys(own_addresses: Iterable[str]) -> set[str]:
    keys: set[str] = set()
    for address in own_addresses:
        keys.add(address.strip().lower())
        parsed = _mailbox({"address": address})
        if parsed is not None:
            keys.add(parsed["address"].lower())
    return keys


def _unique(mailboxes: Iterable[dict[str, str]], *, exclude: set[str]) -> list[dict[str, str]]:
    result = []
    for mailbox in mailboxes:
        key = mailbox["address"].lower()
        if key not in exclude:
            exclude.add(key)
            result.append(mailbox)
    return result


# --- Quoting -------------------------------------------------------------------------


def _when(original: Message) -> datetime | None:
    return original.sent_at or original.received_at


def _sender_text(original: Message) -> str:
    name = _subject_clean(original.from_name)[:200]
    address = _subject_clean(original.from_address)[:320]
    if name and address:
        return f"{name} <{address}>"
    return name or address or "(unknown sender)"


def _cut(text: str, *, cut: bool = False) -> str:
    """`text` up to MAX_QUOTED_CHARS, with a note when it (or, `cut`, the
    HTML it came from) was longer."""
    if len(text) <= MAX_QUOTED_CHARS and not cut:
        return text
    return text[:MAX_QUOTED_CHARS] + "\n[... the rest of the message is not quoted ...]"


def _original_text(original: Message) -> str:
    text = (original.text_body or "").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip() and original.html_body:
        # Stored HTML is whatever the sender wrote: converted up to a bound
        # (its text is cut at MAX_QUOTED_CHARS after anyway).
        html = original.html_body
        text = text_from_html(html[:MAX_QUOTED_HTML_CHARS])
        if len(html) > MAX_QUOTED_HTML_CHARS:
            return _cut(text.strip("\n"), cut=True)
    return _cut(text.strip("\n"))


def _original_html(original: Message) -> str:
    """The original's HTML sanitised, or its text escaped."""
    if (original.html_body or "").strip():
        cleaned = sanitize_html(_cut(original.html_body), allow_remote_images=False).html
        if cleaned.strip():
            return cleaned
    return _text_as_html(_original_text(original))


def _text_as_html(text: str) -> str:
    return "<div>" + escape(text).replace("\n", "<br>\n") + "</div>" if text else ""


def _attribution(original: Message) -> str:
    when = _when(original)
    sender = _sender_text(original)
    return f"On {format_datetime(when)}, {sender} wrote:" if when else f"{sender} wrote:"


def _quote_lines(text: str) -> str:
    return "\n".join(
        (">" + line if line.startswith(">") else f"> {line}") if line else ">" for line in text.split("\n")
    )


def _list_text(mailboxes: list[dict[str, str]]) -> str:
    return ", ".join(f"{m['name']} <{m['address']}>" if m["name"] else m["address"] for m in mailboxes)


# --- Builders --------------------------------------------------------------------------


def reply_build(*, original: Message, own_addresses: set[str], reply_all: bool) -> ReplyDraft:
    """A reply (to all, with `reply_all`) to `original`; see the module
    docstring for the rules."""
    own = _own_keys(own_addresses)
    sender = _mailbox({"name": original.from_name, "address": original.from_address})
    reply_to = _mailboxes(original.reply_to)
    original_to = _mailboxes(original.to)
    from_self = sender is not None and sender["address"].lower() in own
    if reply_to:
        to_candidates = reply_to
    elif from_self:
        to_candidates = original_to
    else:
        to_candidates = [sender] if sender is not None else []
    to = _unique(to_candidates, exclude=set(own)) or _unique(to_candidates, exclude=set())
    cc: list[dict[str, str]] = []
    if reply_all:
        taken = own | {m["address"].lower() for m in to}
        cc = _unique([*original_to, *_mailboxes(original.cc)], exclude=taken)

    message_id = _own_id(original)
    earlier = _writable_ids(original.references or []) or _writable_ids([original.in_reply_to])
    chain = _writable_ids([*earlier, message_id]) if message_id else earlier

    text = _original_text(original)
    attribution = _attribution(original)
    quoted_text = f"\n\n{attribution}\n{_quote_lines(text)}\n" if text else f"\n\n{attribution}\n"
    quoted_html = (
        f"<p><br></p>\n<p>{escape(attribution)}</p>\n"
        f"<blockquote>\n{_original_html(original)}\n</blockquote>\n"
    )
    return ReplyDraft(
        to=to,
        cc=cc,
        subject=reply_subject(original.subject),
        in_reply_to_header=f"<{message_id}>" if message_id else "",
        references_header=_references_header(chain),
        quoted_text=quoted_text,
        quoted_html=quoted_html,
    )


def forward_build(*, original: Message) -> ReplyDraft:
    """A forward of `original`: no recipients, `Fwd:` subject, the
    original's header block and body. Its attachments are the caller's to
    copy (`messages.selectors.message_attachments`)."""
    when = _when(original)
    fields = [
        ("From", _sender_text(original)),
        ("Date", format_datetime(when) if when else ""),
        ("Subject", _subject_clean(original.subject)),
        ("To", _list_text(_mailboxes(original.to))),
        ("Cc", _list_text(_mailboxes(original.cc))),
    ]
    shown = [(name, value) for name, value in fields if value or name in ("From", "Subject")]
    header_text = "\n".join(f"{name}: {value}" for name, value in shown)
    header_html = "<br>\n".join(f"{name}: {escape(value)}" for name, value in shown)
    text = _original_text(original)
    message_id = _own_id(original)
    return ReplyDraft(
        subject=forward_subject(original.subject),
        references_header=f"<{message_id}>" if message_id else "",
        quoted_text=f"\n\n{FORWARD_SEPARATOR}\n{header_text}\n\n{text}\n",
        quoted_html=(
            f"<p><br></p>\n<div>{FORWARD_SEPARATOR}<br>\n{header_html}</div>\n<br>\n{_original_html(original)}\n"
        ),
    )
