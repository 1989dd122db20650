"""Raw bytes to the compat32 MIME tree: a fast splitter for well-formed mail,
the FeedParser for the rest. Both count parts, nesting and header fields as
they go and stop at the `Limits` with `MessageRejected`, before building
what is over them: a tree is never built whole and then measured."""

import itertools
import re
from email.feedparser import FeedParser
from email.message import Message as MimeMessage
from email.policy import compat32

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


def _fast_part(text: str, start: int, end: int, depth: int, budget: _Budget) -> MimeMessage:
    """One part of `text[start:end]`: headers, then its body or subparts.
    Mirrors FeedParser._parsegen for input without defects."""
    budget.part(depth)
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
        budget.header(stop - start)
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
            budget.fields_add(1)
            if field:
                msg._headers.append(compat32.header_source_parse(field))  # type: ignore[attr-defined]  # private list, filled as FeedParser does
            field = [line]
        if field:
            msg._headers.append(compat32.header_source_parse(field))  # type: ignore[attr-defined]  # private list, filled as FeedParser does
    maintype = msg.get_content_maintype()
    if maintype == "message":
        raise _Unusual
    if maintype != "multipart":
        msg._payload = text[body:end]  # type: ignore[attr-defined]  # set as FeedParser does: no set_payload checks
        return msg
    boundary = msg.get_boundary()
    if boundary is None or msg.get_content_type() == "multipart/digest":
        raise _Unusual
    if str(msg.get("content-transfer-encoding", "8bit")).lower() not in ("7bit", "8bit", "binary"):
        raise _Unusual
    marks = _boundary_lines(text, body, end, "--" + boundary, budget)
    if not marks or marks[0][2] or not marks[-1][2]:
        raise _Unusual  # no start or no close boundary
    if marks[0][0] > body:
        msg.preamble = _strip_eol(text[body : marks[0][0]])
    for (_, part_start, _), (part_end, _, _) in itertools.pairwise(marks):
        if part_start == part_end:
            raise _Unusual  # repeated boundary lines
        child = _fast_part(text, part_start, part_end, depth + 1, budget)
        # RFC 2046: the line break before a boundary belongs to the boundary.
        if child.get_content_maintype() == "multipart":
            child.epilogue = _strip_eol(child.epilogue) if child.epilogue else None
        else:
            child._payload = _strip_eol(child._payload)  # type: ignore[attr-defined]  # str, set just above
        msg.attach(child)
    msg.epilogue = text[marks[-1][1] : end]
    return msg


def _boundary_lines(
    text: str, start: int, end: int, separator: str, budget: _Budget
) -> list[tuple[int, int, bool]]:
    """(line start, next line's start, is the close boundary) of each
    boundary line in text[start:end], up to the close boundary: a line that is
    the separator, optionally `--`, then only spaces and tabs. More parts
    than the budget has left is `MessageRejected`, found before any is built."""
    parts_left = budget.parts_left()
    marks: list[tuple[int, int, bool]] = []
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
        newline = text.find("\n", found, end)
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
    all) is split with `str.find` instead of the FeedParser's line-by-line
    loop and per-boundary regex, about ten times faster and without a str
    per line; anything unusual (defects, a lone CR, message/* parts,
    digests, repeated boundaries) goes through the FeedParser, whose
    recovery rules stay the reference. The FeedParser keeps every line of a
    part as a str (about 60 bytes each besides its text), so it is only
    given mail of at most `limits.max_lines` lines."""
    limits = limits or Limits()
    text = raw.decode("ascii", "surrogateescape")
    if "\r" not in text or text.count("\r") == text.count("\r\n"):
        try:
            return _fast_part(text, 0, len(text), 0, _Budget(limits))
        except _Unusual:
            pass
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
