"""Outgoing messages as MIME bytes: `message_build`, and what it needs.

`message_build` writes an `OutgoingMessage` with Python's `EmailMessage`
under `email.policy.SMTP` (CRLF; bodies 7-bit: quoted-printable or base64 as
the email package chooses, so no line is over 998 octets and no server needs
8BITMIME) or, when asked, `email.policy.SMTPUTF8` (raw UTF-8 headers, 8-bit
bodies; for servers that offer SMTPUTF8).

The address headers (From, To, Cc, Reply-To), Subject, Message-ID,
In-Reply-To and References are written here rather than by the email package,
whose folder loses the quotes of a long display name with commas (one
recipient becomes many) and RFC 2047-encodes a long Message-ID. Display names
are quoted when they are not plain words and RFC 2047-encoded (UTF-8, base64)
when they are not ASCII or hold "=?"; a subject that is not plain ASCII is
written as encoded words alike. Every header line is folded at 78 characters
where there is white space to fold at and never passes 998.

Structure: text only -> text/plain; HTML (with or without text) ->
multipart/alternative, the text part made by `text_from_html` when none is
given; attachments -> multipart/mixed around that. Attachment file names
that are not ASCII are RFC 2231-encoded; a content type that is not a valid
`type/subtype` becomes application/octet-stream, as do `multipart/*` and
`message/*` other than a 7-bit `message/rfc822` (which is attached as
itself), since a MIME part of those types may not be base64-encoded.

Bcc is never written. `OutgoingMessage.draft` changes nothing in the bytes:
the Drafts copy is the same message; the IMAP flags say it is a draft.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime
from html.parser import HTMLParser
from urllib.parse import urlsplit

from .addresses import (
    AddressError,
    domain_to_ascii,
    encoded_words,
    header_text_check,
    mailbox_words,
    needs_smtputf8,
)

__all__ = [
    "OutgoingAttachment",
    "OutgoingMessage",
    "envelope_recipients",
    "message_build",
    "message_id_make",
    "message_needs_smtputf8",
    "text_from_html",
]

_FOLD_AT = 78
_MAX_LINE = 998
_MAX_MESSAGE_ID = 995  # "<" + id + ">" on a line of its own, within 998
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>")  # printable ASCII but "<", ">"
_OWN_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[A-Za-z0-9.-]+>")
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class OutgoingAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class OutgoingMessage:
    sender: dict[str, str]
    to: list[dict[str, str]]
    cc: list[dict[str, str]]
    bcc: list[dict[str, str]]
    reply_to: list[dict[str, str]]
    subject: str
    text_body: str
    html_body: str
    message_id: str  # "<...>"
    date: datetime
    in_reply_to: str = ""  # "<...>"
    references: str = ""  # "<...> <...>"
    attachments: Sequence[OutgoingAttachment] = ()
    draft: bool = False  # the Drafts copy: the same bytes (see the module docstring)


# --- Identifiers and recipients ------------------------------------------------------


def message_id_make(domain: str) -> str:
    """A new Message-ID, `<32 hex digits@domain>`: the domain as IDNA, or
    "localhost" when it is empty or not a valid domain."""
    try:
        ascii_domain = domain_to_ascii(domain.strip()) if domain and domain.strip() else "localhost"
    except AddressError:
        ascii_domain = "localhost"
    return f"<{uuid.uuid4().hex}@{ascii_domain}>"


def envelope_recipients(message: OutgoingMessage) -> list[str]:
    """The RCPT TO addresses: To, Cc and Bcc in order, each once (compared
    case-insensitively; the first spelling kept)."""
    seen: set[str] = set()
    result: list[str] = []
    for mailbox in [*message.to, *message.cc, *message.bcc]:
        address = mailbox["address"]
        key = address.lower()
        if key not in seen:
            seen.add(key)
            result.append(address)
    return result


def message_needs_smtputf8(message: OutgoingMessage) -> bool:
    """True when the sender or a recipient (Bcc too) has a non-ASCII local
    part: the message can only go through a server that offers SMTPUTF8, and
    must be built with `smtputf8=True`."""
    mailboxes = [message.sender, *message.to, *message.cc, *message.bcc, *message.reply_to]
    return any(needs_smtputf8(m["address"]) for m in mailboxes)


# --- Header writing ------------------------------------------------------------------


class _VerbatimHeader(str):
    """A header value the email package writes as it is: `fold` returns the
    lines made here (EmailPolicy uses any value with `name` and `fold`)."""

    name: str
    _folded: str

    def __new__(cls, name: str, words: Sequence[str]) -> _VerbatimHeader:
        obj = super().__new__(cls, " ".join(words))
        obj.name = name
        obj._folded = _fold(name, words)
        return obj

    def fold(self, *, policy: Policy) -> str:
        return self._folded.replace("\r\n", policy.linesep) + policy.linesep


def _fold(name: str, words: Sequence[str]) -> str:
    """`Name: word word ...` folded before a word that would take the line
    past 78 characters (CRLF between lines; each word is kept whole)."""
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(word) + len(name) + 3 > _MAX_LINE:
            raise ValueError(f"a {name} header word is too long to write")
        if line != f"{name}:" and len(line) + 1 + len(word) > _FOLD_AT:
            lines.append(line)
            line = " " + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "\r\n".join(lines)


def _address_header(name: str, mailboxes: Sequence[Mapping[str, str]], *, utf8: bool) -> _VerbatimHeader:
    words: list[str] = []
    for position, mailbox in enumerate(mailboxes):
        mailbox_header_words = mailbox_words(mailbox, smtputf8=utf8)
        if position < len(mailboxes) - 1:
            mailbox_header_words[-1] += ","
        words.extend(mailbox_header_words)
    return _VerbatimHeader(name, words)


def _unstructured_header(name: str, text: str, *, utf8: bool) -> _VerbatimHeader:
    """An unstructured header (Subject) whose decoded value is exactly
    `text`: plain (folded before white space, which unfolding restores) when
    it can be, else encoded words."""
    tokens = re.findall(r"[ \t]*[^ \t]+|[ \t]+$", text)
    plain = (
        "=?" not in text
        and (utf8 or text.isascii())
        and not text[:1].isspace()
        and all(len(token) < _MAX_LINE - len(name) - 4 for token in tokens)
    )
    if not plain:
        return _VerbatimHeader(name, encoded_words(text))
    # Fold only before white space: a token keeps its leading blanks, and
    # the space `_fold` puts between words stands for the first of them.
    words = [tokens[0], *(token[1:] if token[0] == " " else token for token in tokens[1:])] if tokens else []
    if any(token[0] == "\t" for token in tokens[1:]):
        # A tab cannot stand in for the joining space: keep it simple and exact.
        return _VerbatimHeader(name, encoded_words(text))
    return _VerbatimHeader(name, words)


def _message_id_check(value: str, *, own: bool = False) -> str:
    pattern = _OWN_MSG_ID if own else _MSG_ID
    if not pattern.fullmatch(value) or len(value) > _MAX_MESSAGE_ID:
        raise ValueError(f"not a Message-ID: {value[:100]!r}")
    return value


def _references_words(value: str) -> list[str]:
    return [_message_id_check(token) for token in value.split()]


# --- Bodies and attachments ------------------------------------------------------------


def _clean_body(text: str) -> str:
    """Lone surrogates (valid JSON, not UTF-8) as U+FFFD; line ends as LF."""
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _attachment_type(attachment: OutgoingAttachment) -> tuple[str, str]:
    content_type = (attachment.content_type or "").strip().lower()
    if not _CONTENT_TYPE.fullmatch(content_type):
        return "application", "octet-stream"
    maintype, subtype = content_type.split("/", 1)
    if maintype == "multipart" or (maintype == "message" and content_type != "message/rfc822"):
        return "application", "octet-stream"
    return maintype, subtype


def _rfc822_payload(data: bytes) -> str | None:
    """An attached message as 7-bit text with CRLF line ends, or None when
    it is not 7-bit or has a line over 998 octets (then it goes as
    application/octet-stream)."""
    if not data.isascii() or b"\x00" in data:
        return None
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if any(len(line) > _MAX_LINE for line in lines):
        return None
    return "\r\n".join(line.decode("ascii") for line in lines)


def _last_part(msg: EmailMessage) -> EmailMessage:
    parts = msg.get_payload()
    if not isinstance(parts, list) or not isinstance(parts[-1], EmailMessage):
        raise TypeError("expected a multipart message")  # add_attachment always makes one
    return parts[-1]


def _attach(msg: EmailMessage, attachment: OutgoingAttachment) -> None:
    filename = header_text_check(attachment.filename, max_length=500)
    filename = filename.replace("/", "_").replace("\\", "_") or "attachment"
    maintype, subtype = _attachment_type(attachment)
    payload = _rfc822_payload(attachment.data) if (maintype, subtype) == ("message", "rfc822") else None
    if payload is not None:
        msg.add_attachment(attachment.data, maintype, subtype, cte="7bit", filename=filename)
        part = _last_part(msg)
        part.set_payload(payload)  # CRLF line ends, as the generator does not convert them here
    else:
        if maintype == "message":
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(attachment.data, maintype, subtype, filename=filename)
        part = _last_part(msg)
    del part["Content-Disposition"]
    part["Content-Disposition"] = _VerbatimHeader("Content-Disposition", _disposition_words(filename))


# attribute-char of RFC 2231: printable ASCII but space, "*", "'", "%" and tspecials.
_ATTRIBUTE_CHAR = re.compile(r"[!#$&+\-.0-9A-Z^_`a-z{|}~]")
_RFC2231_SEGMENT = 60


def _disposition_words(filename: str) -> list[str]:
    """`attachment; filename="..."` for a short plain ASCII name, else the
    name RFC 2231-encoded (UTF-8, percent-escaped) in continuations of at
    most 60 characters, one a word.

    Readers (ours too) decode RFC 2047 encoded words in file names, as
    Outlook writes them, even inside RFC 2231 values: a name holding "=?"
    is itself written as encoded words in quotes (up to 100 characters;
    longer ones go as RFC 2231 and may read back decoded)."""
    quoted = '"' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if filename.isascii() and "=?" not in filename and len(quoted) <= _RFC2231_SEGMENT:
        return ["attachment;", f"filename={quoted}"]
    if "=?" in filename and len(filename) <= 100:
        return ["attachment;", 'filename="' + " ".join(encoded_words(filename)) + '"']
    escaped = [
        ch if _ATTRIBUTE_CHAR.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in filename
    ]
    segments: list[str] = []
    current = "utf-8''"
    for piece in escaped:
        if len(current) + len(piece) > _RFC2231_SEGMENT:
            segments.append(current)
            current = ""
        current += piece
    segments.append(current)
    if len(segments) == 1:
        return ["attachment;", f"filename*={segments[0]}"]
    words = [f"filename*{n}*={segment};" for n, segment in enumerate(segments)]
    words[-1] = words[-1][:-1]
    return ["attachment;", *words]


# --- The message -------------------------------------------------------------------------


def message_build(message: OutgoingMessage, *, smtputf8: bool = False) -> bytes:
    """The message as bytes with CRLF line ends, ready for DATA and APPEND.

    Raises AddressError for an address, name, subject or file name that
    cannot go into a header (a second check after the API's), and ValueError
    for a naive date, a malformed Message-ID or references, or a non-ASCII
    local part without `smtputf8` (see `message_needs_smtputf8`)."""
    if message.date.tzinfo is None or message.date.utcoffset() is None:
        raise ValueError("the Date of a message must be timezone-aware")
    if not smtputf8 and message_needs_smtputf8(message):
        raise ValueError("the message has a non-ASCII address and must be built with smtputf8=True")
    policy = email_policy.SMTPUTF8 if smtputf8 else email_policy.SMTP.clone(cte_type="7bit")
    subject = header_text_check(message.subject)

    msg = EmailMessage(policy=policy)
    msg["Date"] = format_datetime(message.date)
    msg["From"] = _address_header("From", [message.sender], utf8=smtputf8)
    for name, mailboxes in (("To", message.to), ("Cc", message.cc), ("Reply-To", message.reply_to)):
        if mailboxes:
            msg[name] = _address_header(name, mailboxes, utf8=smtputf8)
    if subject:
        msg["Subject"] = _unstructured_header("Subject", subject, utf8=smtputf8)
    msg["Message-ID"] = _VerbatimHeader("Message-ID", [_message_id_check(message.message_id, own=True)])
    if message.in_reply_to:
        msg["In-Reply-To"] = _VerbatimHeader("In-Reply-To", [_message_id_check(message.in_reply_to)])
    if message.references.strip():
        msg["References"] = _VerbatimHeader("References", _references_words(message.references))

    html = _clean_body(message.html_body)
    text = _clean_body(message.text_body)
    if html.strip() and not text.strip():
        text = text_from_html(html)
    msg.set_content(text, subtype="plain", charset="utf-8")
    if html.strip():
        msg.add_alternative(html, subtype="html", charset="utf-8")
    for attachment in message.attachments:
        _attach(msg, attachment)
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the email package adds it to every part it makes
    return msg.as_bytes()


# --- HTML as text --------------------------------------------------------------------------

_HIDDEN = frozenset({"script", "style", "title", "template", "head", "noscript"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "body", "caption", "center", "dd", "details", "dialog", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "html", "main",
        "nav", "section", "summary", "table", "tbody", "tfoot", "thead",
    }
)  # fmt: skip
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "pre"})
_LINK_SCHEMES = frozenset({"http", "https", "mailto", "tel", "ftp"})
# Links open at once whose address is shown; deeper ones read as plain text.
# Each emitted piece of text is joined once per open link it is in, so the
# cap keeps the conversion linear on `<a>` after `<a>` never closed.
MAX_OPEN_LINKS = 16


class _HtmlText(HTMLParser):
    """Readable text of an HTML body (see `text_from_html`)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._breaks = 0  # line ends owed before the next text
        self._hidden: list[str] = []
        self._pre = 0
        self._quote = 0
        self._lists: list[int | None] = []  # None for <ul>, the next number for <ol>
        self._marker = ""
        # Open links: (href, where its text starts in `_link_text`), which
        # holds the text emitted while any link is open.
        self._links: list[tuple[str, int]] = []
        self._link_text: list[str] = []
        self._untracked_links = 0  # open beyond MAX_OPEN_LINKS
        self._space = False
        self._last_quote = 0

    # Output.
    def _prefix(self) -> str:
        return "> " * self._quote + "   " * max(len(self._lists) - 1, 0)

    def _break(self, count: int) -> None:
        self._breaks = max(self._breaks, count)
        self._space = False

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self._breaks:
            if self._line or self.lines:
                if self._line:
                    self.lines.append("".join(self._line).rstrip())
                    self._line = []
                # An empty line between a quote and what is not takes the shallower depth.
                depth = min(self._quote, self._last_quote)
                for _ in range(self._breaks - 1):
                    self.lines.append(("> " * depth).rstrip())
            self._breaks = 0
        if not self._line:
            self._last_quote = self._quote
            self._line.append(self._prefix() + self._marker)
            self._marker = ""
        self._line.append(text)
        if self._links:
            self._link_text.append(text)

    def _text(self, data: str) -> None:
        if self._pre:
            for position, piece in enumerate(data.split("\n")):
                if position:
                    self._breaks += 1
                self._emit(piece.replace("\r", ""))
            return
        if data[:1].isspace():
            self._space = True
        words = data.split()
        if not words:
            return
        text = " ".join(words)
        if self._space and self._line and not self._breaks:
            text = " " + text
        self._emit(text)
        self._space = data[-1:].isspace()

    # Parser callbacks.
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._hidden.clear()
        if tag in _HIDDEN:
            self._hidden.append(tag)
            return
        if self._hidden:
            return
        if tag == "br":
            if self._line or self.lines:
                self._breaks += 1
            self._space = False
        elif tag in _PARAGRAPH:
            self._break(2)
            if tag == "hr":
                self._emit("-" * 20)
                self._break(2)
            elif tag == "pre":
                self._pre += 1
        elif tag == "blockquote":
            self._break(2)
            self._quote += 1
        elif tag in ("ul", "ol"):
            self._break(1 if self._lists else 2)
            self._lists.append(None if tag == "ul" else 1)
        elif tag == "li":
            self._break(1)
            if self._lists and self._lists[-1] is not None:
                number = self._lists[-1]
                self._lists[-1] = number + 1
                self._marker = f"{number}. "
            else:
                self._marker = "- "
        elif tag in ("tr", "dt", "dd") or tag in _BLOCK:
            self._break(1)
        elif tag in ("td", "th"):
            if self._line:
                self._space = True
        elif tag == "a":
            if len(self._links) >= MAX_OPEN_LINKS:
                self._untracked_links += 1
                return
            href = dict(attrs).get("href") or ""
            self._links.append((href.strip(), len(self._link_text)))
        elif tag == "img":
            alt = " ".join((dict(attrs).get("alt") or "").split())
            if alt:
                self._text(f"[{alt}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "hr", "img"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            if tag in self._hidden:
                while self._hidden and self._hidden.pop() != tag:
                    pass
            return
        if self._hidden:
            return
        if tag in _PARAGRAPH:
            if tag == "pre" and self._pre:
                self._pre -= 1
            self._break(2)
        elif tag == "blockquote":
            self._break(2)
            self._quote = max(self._quote - 1, 0)
        elif tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
            self._break(1 if self._lists else 2)
        elif tag in ("li", "tr", "dt", "dd") or tag in _BLOCK:
            self._break(1)
        elif tag == "a" and self._untracked_links:
            self._untracked_links -= 1
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = " ".join("".join(self._link_text[start:]).split())
            if not self._links:
                self._link_text.clear()
            shown = href[7:] if href.lower().startswith("mailto:") else href
            scheme = urlsplit(href).scheme.lower() if href else ""
            if scheme in _LINK_SCHEMES and shown and shown != label and href != label:
                self._emit(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self._text(data)

    def text(self) -> str:
        if self._line:
            self.lines.append("".join(self._line).rstrip())
            self._line = []
        out: list[str] = []
        for line in self.lines:
            if not line.strip(" >") and out and not out[-1].strip(" >") and line == out[-1]:
                continue  # no runs of empty lines
            out.append(line.rstrip())
        while out and not out[0].strip():
            out.pop(0)
        while out and not out[-1].strip():
            out.pop()
        return "\n".join(out)


def text_from_html(html: str) -> str:
    """Plain text that reads like the HTML: paragraphs apart, line breaks
    kept, links as "text (url)", lists as "- item" / "1. item", quotes as
    "> " lines, table cells side by side; scripts, styles, the head and
    comments out, entities decoded. No trailing newline."""
    parser = _HtmlText()
    parser.feed(_clean_body(html))
    parser.close()
    return parser.text()
