"""Address headers (From, To, Cc, ...) to `{"name", "address"}` lists."""

import re
from email.utils import getaddresses

from .headers import clean_line, clean_text, decode_header_value, unraw
from .results import Address

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
# Fields of one name read (a message may repeat To: or Cc:).
MAX_ADDRESS_FIELDS = 20


def _split_addresses(value: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
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


def parse_addresses(values: list[str] | None, limit: int = 1000) -> list[Address]:
    """[{"name": ..., "address": ...}] from one or more address headers, the
    first `limit` of them. Display names are decoded after splitting, so an
    encoded comma inside a name cannot split an address."""
    if not values:
        return []
    try:
        pairs = [
            pair
            for v in values[:MAX_ADDRESS_FIELDS]
            for pair in _split_addresses(clean_text(unraw(v[:MAX_ADDRESS_HEADER])))
        ]
    except Exception:
        return []
    result: list[Address] = []
    for name, address in pairs:
        if len(result) >= limit:
            break
        address = clean_line(address, 320)
        name = clean_line(decode_header_value(name), 500)
        if not address and not name:
            continue
        result.append({"name": name, "address": address})
    return result
