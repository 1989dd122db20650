"""What the IMAP server answers, checked and typed: FETCH responses parsed,
numbers and UIDs in range, sequence sets, and the results the session
returns (FolderInfo, FolderState, FetchedMessage, FlagChanges)."""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeAlias, overload

from imapclient.datetime_util import parse_to_datetime

from mailboxes.imap.errors import ProtocolViolation

# One message's FETCH items by name (b"UID", b"FLAGS", b"BODY[]", ...), as the
# parsers give them: numbers, tuples of flags, datetimes, bytes, None.
FetchData: TypeAlias = dict[bytes, object]

_FETCH_START = re.compile(rb"(\d+) \(")
_FETCH_ITEM = re.compile(
    rb"(UID|RFC822\.SIZE|MODSEQ|FLAGS|INTERNALDATE|BODY\[\]) "
    rb'(?:(\d{1,20})|\(([^()"{}]*)\)|"([^"\\]*)"|\{(\d{1,20})\}$)'
)
_FETCH_KIND = {b"UID": 2, b"RFC822.SIZE": 2, b"FLAGS": 3, b"MODSEQ": 3, b"INTERNALDATE": 4, b"BODY[]": 5}


def parse_fetch_fast(data: list[bytes | tuple[bytes, bytes] | None]) -> dict[int, FetchData] | None:
    """imaplib's FETCH responses as IMAPClient's `parse_fetch_response(...,
    normalise_times=False, uid_is_key=False)` returns them (by sequence
    number; numbers, flag tuples, dates, literals), for the items the sync
    asks for in the shape servers send them, with a few regular expressions
    instead of IMAPClient's character-by-character lexer (most of the CPU of
    a FETCH). None for anything else, which IMAPClient then parses."""
    if data == [None]:
        return {}
    parsed: dict[int, FetchData] = {}
    position, count = 0, len(data)
    while position < count:
        entry = data[position]
        position += 1
        literal = None
        if isinstance(entry, tuple) and len(entry) == 2:
            line, literal = entry
            if position >= count or data[position] != b")":
                return None
            position += 1
        elif isinstance(entry, bytes) and entry.endswith(b")"):
            line = entry[:-1]
        else:
            return None
        start = _FETCH_START.match(line)
        if start is None:
            return None
        fields: FetchData = {}
        at, end = start.end(), len(line)
        while at < end:
            match = _FETCH_ITEM.match(line, at)
            if match is None or match.lastindex != _FETCH_KIND[match.group(1)]:
                return None
            name, kind = match.group(1), match.lastindex
            if kind == 2:
                fields[name] = int(match.group(2))
            elif kind == 3:
                fields[name] = tuple(int(a) if a.isdigit() else a for a in match.group(3).split())
            elif kind == 4:
                try:
                    fields[name] = parse_to_datetime(match.group(4), normalise=False)
                except ValueError:
                    fields[name] = None
            else:
                if literal is None or int(match.group(5)) != len(literal):
                    return None
                fields[name] = literal
            at = match.end()
            if at < end:
                if line[at : at + 1] != b" ":
                    return None
                at += 1
        seq = int(start.group(1))
        parsed.setdefault(seq, {b"SEQ": seq}).update(fields)
    return parsed


# --- Results ----------------------------------------------------------------------


@dataclass
class FolderInfo:
    name: str
    delimiter: str
    flags: tuple[str, ...]

    @property
    def selectable(self) -> bool:
        return not {"\\noselect", "\\nonexistent"} & {f.lower() for f in self.flags}


@dataclass
class FolderState:
    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None


@dataclass
class FetchedMessage:
    uid: int
    flags: tuple[str, ...]
    internal_date: datetime | None
    size: int
    modseq: int | None
    raw: bytes | None = None


@dataclass
class FlagChanges:
    changed: dict[int, tuple[tuple[str, ...], int | None]] = field(default_factory=dict)
    vanished: set[int] = field(default_factory=set)


MAX_UID = 2**32 - 1  # RFC 3501: nz-number, 32 bits
MAX_MODSEQ = 2**63 - 1  # RFC 7162: mod-sequence-value, 63 bits


def check_uid(value: object) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_UID:
        raise ProtocolViolation(f"the server sent UID {str(value)[:40]}")
    return value


@overload
def check_number(
    value: object, *, name: str, low: int = 0, high: int = MAX_MODSEQ, optional: Literal[False] = False
) -> int: ...
@overload
def check_number(
    value: object, *, name: str, low: int = 0, high: int = MAX_MODSEQ, optional: Literal[True]
) -> int | None: ...
def check_number(
    value: object, *, name: str, low: int = 0, high: int = MAX_MODSEQ, optional: bool = False
) -> int | None:
    """A number from a server reply, in range, or ProtocolViolation."""
    if value is None and optional:
        return None
    if not isinstance(value, int | str | bytes):  # None, a tuple, a datetime: what int() refuses
        raise ProtocolViolation(f"the server sent {name} {str(value)[:40]!r}")
    try:
        number = int(value)
    except ValueError as exc:
        raise ProtocolViolation(f"the server sent {name} {str(value)[:40]!r}") from exc
    if not low <= number <= high:
        raise ProtocolViolation(f"the server sent {name} {number}, out of range")
    return number


def sequence_set(uids: Iterable[int]) -> str:
    """`1:3,7,9:10` from sorted or unsorted UIDs: short commands for big sets."""
    ordered = sorted(set(uids))
    ranges: list[list[int]] = []
    for uid in ordered:
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(f"{a}:{b}" if a != b else str(a) for a, b in ranges)


_SEQ_ITEM = re.compile(r"^(\d+)(?::(\d+))?$")


def parse_sequence_set(text: str, *, low: int = 1, high: int = MAX_UID, limit: int = 2_000_000) -> set[int]:
    """UIDs of a server's sequence set (VANISHED, ESEARCH) within low..high.
    Ranges are clipped before they are expanded, and the result is bounded:
    `1:4294967295` from a hostile server costs nothing."""
    uids: set[int] = set()
    for item in text.split(","):
        match = _SEQ_ITEM.match(item.strip())
        if not match:
            raise ProtocolViolation(f"bad sequence set item {item[:40]!r}")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        first, last = max(min(first, last), low), min(max(first, last), high)
        if first > last:
            continue
        if len(uids) + (last - first + 1) > limit:
            raise ProtocolViolation("sequence set too large")
        uids.update(range(first, last + 1))
    return uids
