"""Raw bytes to the compat32 MIME tree: a fast splitter for well-formed mail,
the FeedParser for the rest."""

import email
import itertools
import re
from email.message import Message as MimeMessage
from email.policy import compat32

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
            child._payload = _strip_eol(child._payload)  # type: ignore[attr-defined]  # str, set just above
        msg.attach(child)
    msg.epilogue = text[marks[-1][1] : end]
    return msg


def _boundary_lines(text: str, start: int, end: int, separator: str) -> list[tuple[int, int, bool]]:
    """(line start, next line's start, is the close boundary) of each
    boundary line in text[start:end], up to the close boundary: a line that is
    the separator, optionally `--`, then only spaces and tabs."""
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
