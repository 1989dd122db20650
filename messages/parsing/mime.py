"""Raw bytes to the compat32 MIME tree: a fast splitter for well-formed mail,
the FeedParser for the rest. Both count parts, nesting and header fields as
they go and stop at the `Limits` with `MessageRejected`, before building
what is over them: a tree is never built whole and then measured."""

import itertools
import re
from email.feedparser import FeedParser
from email.message import Message as MimeMessage
from email.policy import compat32
from typing import cast

from .limits import Limits, MessageRejected

_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")
# The FeedParser's chunk, as `email.parser.Parser` feeds it.
_FEED_CHUNK = 8192
# Lines where a part's boundary is found but does not make a boundary line
# (mid-line, or followed by other text), each a turn of a Python loop, and
# met again at every level it is nested in. Real mail has a few (an outer
# boundary that is a prefix of an inner one); 100,000 cost ~50 ms.
MAX_BOUNDARY_MISSES = 100_000
# The FeedParser tests each line against the boundary of every multipart
# open around it (a regex each): lines times open levels, at most this many
# (~3 s). 50 MB of base64 in a forwarded message/rfc822 is 680,000 lines
# under three or four levels.
MAX_LINE_CHECKS = 3_000_000
# The str the FeedParser is fed: one byte a character for ASCII mail, four
# once one byte is 8-bit; its lines and their joined payloads hold as much
# again. 32 MiB (8 MiB of 8-bit mail): ~100 MB besides the raw bytes.
FEEDPARSER_MAX_TEXT_BYTES = 32 * 1024 * 1024


class _Unusual(Exception):
    """The fast tree builder declines; the FeedParser takes over."""


class _Budget:
    """What one message's tree may hold; each builder charges it as it goes
    and it raises `MessageRejected` at the first thing over a limit."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.parts = 0
        self.fields = 0
        self.misses = 0
        self.line_checks = 0

    def part(self, depth: int) -> None:
        """One more part, at `depth` (the message itself is at 0)."""
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise MessageRejected(f"more than {self.limits.max_parts} MIME parts")
        if depth > self.limits.max_depth:
            raise MessageRejected(f"MIME nesting deeper than {self.limits.max_depth}")

    def parts_left(self) -> int:
        return self.limits.max_parts - self.parts

    def header(self, size: int) -> None:
        """A part's header block of `size` characters, before it is split."""
        if size > self.limits.max_header_bytes:
            raise MessageRejected(
                f"a MIME part's header is over the {self.limits.max_header_bytes}-byte limit"
            )

    def line_checks_add(self, count: int) -> None:
        self.line_checks += count
        if self.line_checks > MAX_LINE_CHECKS:
            raise MessageRejected(
                f"more than {MAX_LINE_CHECKS} line checks against MIME boundaries (lines times nesting)"
            )

    def fields_add(self, count: int) -> None:
        self.fields += count
        if self.fields > self.limits.max_header_fields:
            raise MessageRejected(f"more than {self.limits.max_header_fields} header fields")


def _strip_eol(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def _decode(raw: bytes, start: int, end: int) -> str:
    return raw[start:end].decode("ascii", "surrogateescape")


class SourcePart(MimeMessage):
    """A leaf part whose payload is still a span of the raw message: its
    text (as `email` would decode it, four bytes a character once one byte
    is 8-bit) is made only when `_payload` is read. `walk_parts` takes the
    bytes instead (`source_bytes`), so a large part costs its bytes, once.
    A message/rfc822 part keeps the span of its enclosed message as well."""

    source: bytes | None = None
    span: tuple[int, int] = (0, 0)
    # A multipart's: where its epilogue starts in the raw message.
    epilogue_start = 0

    @property
    def _payload(self) -> object:
        if self.source is not None and not self._embedded:
            return _decode(self.source, *self.span)
        return self._value

    @_payload.setter
    def _payload(self, value: object) -> None:
        if not getattr(self, "_embedded", False):
            self.source = None
        self._value = value

    _embedded = False

    def set_source(self, raw: bytes, start: int, end: int, *, embedded: bool = False) -> None:
        self._embedded = embedded
        self.source, self.span = raw, (start, end)

    def is_multipart(self) -> bool:
        return self._embedded or (self.source is None and isinstance(self._value, list))

    def source_bytes(self, limit: int | None = None) -> bytes:
        """The span's bytes, or the first `limit` of them."""
        source, (start, end) = cast(bytes, self.source), self.span
        return source[start : end if limit is None else min(end, start + limit)]

    def strip_eol(self) -> None:
        """RFC 2046: the line break before a boundary belongs to it."""
        source, (start, end) = cast(bytes, self.source), self.span
        if source.endswith(b"\r\n", start, end):
            end -= 2
        elif source.endswith(b"\n", start, end):
            end -= 1
        self.span = (start, end)


def _last_leaf(part: MimeMessage) -> MimeMessage:
    """The part whose end a boundary line ends: the FeedParser's `_last`
    (inside enclosed messages, the innermost)."""
    while part.get_content_type() == "message/rfc822" and isinstance(part._payload, list):  # type: ignore[attr-defined]
        part = part._payload[0]  # type: ignore[attr-defined]
    return part


def _fast_part(raw: bytes, start: int, end: int, depth: int, budget: _Budget) -> MimeMessage:
    """One part of `raw[start:end]`: headers, then its body or subparts.
    Mirrors FeedParser._parsegen for input without defects."""
    budget.part(depth)
    msg = SourcePart(policy=compat32)
    if raw.startswith(b"\n", start, end):
        body = start + 1
    elif raw.startswith(b"\r\n", start, end):
        body = start + 2
    else:
        # The header block ends at the first empty line; every line before
        # it must be a field or a continuation, else the FeedParser's
        # recovery rules apply.
        stop = raw.find(b"\n\n", start, end)
        crlf = raw.find(b"\n\r\n", start, end)
        if stop < 0 or (0 <= crlf < stop):
            stop = crlf
            body = crlf + 3
        else:
            body = stop + 2
        if stop < 0:
            raise _Unusual
        budget.header(stop - start)
        field: list[str] = []
        for line in _decode(raw, start, stop + 1).split("\n")[:-1]:
            line += "\n"
            if line[0] in " \t":
                if not field:
                    raise _Unusual
                field.append(line)
                continue
            if not _HEADER_NAME.match(line):
                raise _Unusual  # "From " lines, bad names: the FeedParser's defect handling
            budget.fields_add(1)
            if field:
                msg._headers.append(compat32.header_source_parse(field))  # type: ignore[attr-defined]  # private list, filled as FeedParser does
            field = [line]
        if field:
            msg._headers.append(compat32.header_source_parse(field))  # type: ignore[attr-defined]  # private list, filled as FeedParser does
    maintype = msg.get_content_maintype()
    if maintype == "message":
        # An enclosed message is parsed as the FeedParser parses it, as a
        # message of its own (whatever its transfer encoding says).
        if msg.get_content_type() != "message/rfc822":
            raise _Unusual  # delivery-status and the others: the FeedParser's rules
        inner = _fast_part(raw, body, end, depth + 1, budget)
        msg._value = [inner]
        msg.set_source(raw, body, end, embedded=True)
        return msg
    if maintype != "multipart":
        msg.set_source(raw, body, end)  # the payload, as FeedParser sets it: no set_payload checks
        return msg
    boundary = msg.get_boundary()
    if boundary is None or msg.get_content_type() == "multipart/digest":
        raise _Unusual
    if str(msg.get("content-transfer-encoding", "8bit")).lower() not in ("7bit", "8bit", "binary"):
        raise _Unusual
    try:
        separator = ("--" + boundary).encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        raise _Unusual from None  # an RFC 2231 boundary in another charset
    marks = _boundary_lines(raw, body, end, separator, budget)
    if not marks or marks[0][2] or not marks[-1][2]:
        raise _Unusual  # no start or no close boundary
    if marks[0][0] > body:
        msg.preamble = _strip_eol(_decode(raw, body, marks[0][0]))
    for (_, part_start, _), (part_end, _, _) in itertools.pairwise(marks):
        if part_start == part_end:
            raise _Unusual  # repeated boundary lines
        child = _fast_part(raw, part_start, part_end, depth + 1, budget)
        # RFC 2046: the line break before a boundary belongs to the boundary.
        last = _last_leaf(child)
        if last.get_content_maintype() == "multipart":
            last.epilogue = _strip_eol(last.epilogue) if last.epilogue else None
        else:
            cast(SourcePart, last).strip_eol()
        node = cast(SourcePart, child)
        while node is not last:
            # Enclosed messages' bytes end where their last part does.
            node.span = (node.span[0], _span_end(last))
            node = cast(list[SourcePart], node._value)[0]
        msg.attach(child)
    msg.epilogue = _decode(raw, marks[-1][1], end)
    msg.epilogue_start = marks[-1][1]
    return msg


def _span_end(part: MimeMessage) -> int:
    """Where `part` (the last leaf or multipart of an enclosed message) ends
    in the raw message."""
    part = cast(SourcePart, part)
    if part.source is not None and not part._embedded:
        return part.span[1]
    return part.epilogue_start + len((part.epilogue or "").encode("ascii", "surrogateescape"))


def _boundary_lines(
    raw: bytes, start: int, end: int, separator: bytes, budget: _Budget
) -> list[tuple[int, int, bool]]:
    """(line start, next line's start, is the close boundary) of each
    boundary line in raw[start:end], up to the close boundary: a line that is
    the separator, optionally `--`, then only spaces and tabs. More parts
    than the budget has left is `MessageRejected`, found before any is built."""
    parts_left = budget.parts_left()
    marks: list[tuple[int, int, bool]] = []
    position = start
    while (found := raw.find(separator, position, end)) >= 0:
        if found == start or raw[found - 1] == 0x0A:
            newline = raw.find(b"\n", found, end)
            line_end = end if newline < 0 else newline + 1
            rest = raw[found + len(separator) : line_end].rstrip(b"\r\n")
            close = rest.startswith(b"--")
            if not (rest[2:] if close else rest).strip(b" \t"):
                marks.append((found, line_end, close))
                if close:
                    break
                if len(marks) > parts_left:
                    # Each boundary line but the close one starts a part.
                    raise MessageRejected(f"more than {budget.limits.max_parts} MIME parts")
                position = line_end
                continue
        budget.misses += 1
        if budget.misses > MAX_BOUNDARY_MISSES:
            raise MessageRejected(f"more than {MAX_BOUNDARY_MISSES} lines that look like MIME boundaries")
        # No boundary line starts before the next line: one miss a line at
        # most, however often a short boundary recurs inside it.
        newline = raw.find(b"\n", found, end)
        if newline < 0:
            break
        position = newline + 1
    return marks


def _lines(text: str) -> int:
    """Lines as the FeedParser splits them: at LF, CRLF or a lone CR."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


class _BoundedFeedParser(FeedParser):
    """The FeedParser charging the budget for each part (when it is made, at
    its depth on the parser's stack) and each part's header lines (when they
    are parsed), so that it stops at the limits as the fast splitter does.
    `_new_message` and `_parse_headers` are the FeedParser's own hooks for
    these (private, unchanged since Python 3.3)."""

    def __init__(self, budget: _Budget) -> None:
        super().__init__(policy=compat32)
        self._budget = budget

    def _new_message(self) -> None:
        self._budget.part(len(self._msgstack))  # type: ignore[attr-defined]  # the parser's own stack
        super()._new_message()  # type: ignore[misc]  # private hook, see above

    def _parse_headers(self, lines: list[str]) -> None:
        self._budget.header(sum(map(len, lines)))
        self._budget.fields_add(sum(1 for line in lines if line[:1] not in (" ", "\t")))
        super()._parse_headers(lines)  # type: ignore[misc]  # private hook, see above


def mime_tree(raw: bytes, limits: Limits | None = None) -> MimeMessage:
    """The compat32 message tree of `raw`, as `email.message_from_bytes`
    builds it, or `MessageRejected` as soon as it is over `limits` (parts,
    depth, a part's header bytes, header fields). Well-formed mail (nearly
    all, enclosed messages included) is split on its bytes with
    `bytes.find` instead of the FeedParser's line-by-line loop and
    per-boundary regex, about ten times faster, without a str per line and
    without decoding the message whole (a str of 8-bit mail takes four bytes
    a character): its leaf parts are `SourcePart`s, spans of `raw`. Anything
    unusual (defects, a lone CR, message/* parts other than rfc822, digests,
    repeated boundaries) goes through the FeedParser, whose recovery rules
    stay the reference. The FeedParser keeps every line of a part as a str
    (about 60 bytes each besides its text) and is fed the message as one
    str, so it is only given mail of at most `limits.max_lines` lines and
    `FEEDPARSER_MAX_TEXT_BYTES` of text."""
    limits = limits or Limits()
    if b"\r" not in raw or raw.count(b"\r") == raw.count(b"\r\n"):
        try:
            return _fast_part(raw, 0, len(raw), 0, _Budget(limits))
        except _Unusual:
            pass
    width = 1 if raw.isascii() else 4
    if len(raw) * width > FEEDPARSER_MAX_TEXT_BYTES:
        raise MessageRejected(
            f"a message of unusual structure over {FEEDPARSER_MAX_TEXT_BYTES // width} bytes"
            f"{'' if width == 1 else ' with 8-bit bytes'} (read line by line)"
        )
    text = raw.decode("ascii", "surrogateescape")
    if _lines(text) > limits.max_lines:
        raise MessageRejected(
            f"more than {limits.max_lines} lines in a message of unusual structure (read line by line)"
        )
    # Fed from the str already decoded, in the chunks `email.parser.Parser`
    # uses: `message_from_bytes` would decode a second copy and hold a third
    # in a StringIO (four bytes a character).
    budget = _Budget(limits)
    parser = _BoundedFeedParser(budget)
    boundaries = parser._input._eofstack  # type: ignore[attr-defined]  # the open parts' boundary tests
    for start in range(0, len(text), _FEED_CHUNK):
        chunk = text[start : start + _FEED_CHUNK]
        budget.line_checks_add(_lines(chunk) * max(1, len(boundaries)))
        parser.feed(chunk)
    return parser.close()
