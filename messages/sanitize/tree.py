"""Pass 1 of the sanitiser: the input re-emitted as well-nested, bounded markup.

`canonicalise` tokenises as HTML5 does for tags, attributes and comments, and
`_Tree` keeps the stack of open elements, closing what a start tag implies
closely enough to html5ever that the two agree on sane markup; see the
package docstring for what is dropped and the bounds.
"""

from __future__ import annotations

import re
import string

from .policy import ALLOWED_TAGS, DROPPED_SUBTREES, HEADINGS, RAW_TEXT, TABLE_SECTIONS

MAX_DEPTH = 200
MAX_OPEN_FORMATTING = 16
MAX_ATTRIBUTES = 32

_FORMATTING = frozenset(
    {"a", "b", "big", "code", "em", "font", "i", "s", "small", "strike", "strong", "tt", "u"}
)
_VOID = frozenset(
    {"area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img", "input"}
    | {"keygen", "link", "meta", "param", "source", "track", "wbr"}
)

_TAG_NAME = re.compile(r"[^\t\n\f\r />]*")
_SKIP_SPACE_SLASH = re.compile(r"[\t\n\f\r /]*")
_ATTR_NAME = re.compile(r"[^\t\n\f\r />][^\t\n\f\r />=]*")
_EQUALS = re.compile(r"[\t\n\f\r ]*=[\t\n\f\r ]*")
_UNQUOTED = re.compile(r"[^\t\n\f\r >]*")
# The common, unambiguous tag in one match; anything else takes the careful path in `_read_tag`.
_SIMPLE_ATTRIBUTE = (
    r"""[\t\n\f\r ]+([^\t\n\f\r />="'<]+)"""  # name
    r"""(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:"([^"]*)"|'([^']*)'|([^\t\n\f\r >"'=<`]+)))?"""  # value
)
_SIMPLE_TAG = re.compile(rf"([^\t\n\f\r />]*)((?:{_SIMPLE_ATTRIBUTE})*)[\t\n\f\r ]*/?>")
_SIMPLE_ATTRIBUTES = re.compile(_SIMPLE_ATTRIBUTE)
_VALID_ATTR = re.compile(r"[a-z_:][-a-z0-9_:.]*\Z")
_COMMENT_END = re.compile(r"--!?>")
_RAW_TEXT_END = {name: re.compile(rf"</{name}[\t\n\f\r />]", re.IGNORECASE) for name in RAW_TEXT}

# Which start tags close what, mirroring html5ever closely enough that the two agree on sane markup.
_CLOSES_P = (
    {"address", "article", "aside", "blockquote", "center", "details", "div", "dl", "figcaption", "figure"}
    | {"footer", "header", "hr", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "ul"}
    | {"li", "dd", "dt"}
    | HEADINGS
)
_SPECIAL = (
    {"address", "applet", "article", "aside", "blockquote", "caption", "center", "colgroup", "dd", "details"}
    | {"div", "dl", "dt", "figcaption", "figure", "footer", "header", "li", "main", "nav", "object"}
    | {"ol", "p", "pre", "section", "select", "summary", "table", "td", "template", "th", "tr", "ul"}
    | HEADINGS
    | TABLE_SECTIONS
)
_CATEGORIES = {
    "@scope": {"applet", "caption", "object", "table", "td", "template", "th"},
    "@table_scope": {"table", "template"},
    "@marker": {"applet", "caption", "object", "td", "template", "th"},
    "@special": _SPECIAL,
    "@li_stop": _SPECIAL - {"address", "div", "p", "li"},
    "@dd_stop": _SPECIAL - {"address", "div", "p", "dd", "dt"},
    "@dd": {"dd", "dt"},
    "@cell": {"td", "th"},
    "@section": TABLE_SECTIONS,
    "@formatting": _FORMATTING,
}
_TABLE_PARTS = {"table", "caption", "colgroup", "tr", "td", "th"} | TABLE_SECTIONS
_PUSHED = (ALLOWED_TAGS - _VOID) | DROPPED_SUBTREES
_KEYS = {name: (name, *(key for key, names in _CATEGORIES.items() if name in names)) for name in _PUSHED}
# Start tags that end an <svg> or <math> in a browser, as they end our dropping of it.
_BREAKS_FOREIGN = (
    {"b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl", "dt", "em", "embed", "hr"}
    | {"i", "img", "li", "listing", "menu", "meta", "nobr", "ol", "p", "pre", "ruby", "s", "small", "span"}
    | {"strong", "strike", "sub", "sup", "table", "tt", "u", "ul", "var", "font"}
    | HEADINGS
)


def canonicalise(src: str) -> str:
    """Re-emit `src` as well-nested markup of allowed tags, bounded as the package docstring says.

    The tokeniser follows the HTML5 one for tags, attributes and comments; text
    is copied as it is (entities and all) and never contains a `<`.
    """
    tree = _Tree()
    pos, end = 0, len(src)
    while pos < end:
        lt = src.find("<", pos)
        if lt < 0:
            tree.text(src[pos:])
            break
        if lt > pos:
            tree.text(src[pos:lt])
        pos = lt + 1
        char = src[pos : pos + 1]
        if char and char in string.ascii_letters:
            tag = _read_tag(src, pos)
            if tag is None:
                break  # a tag cut off by the end of input is dropped, as browsers do
            pos, name, attributes = tag
            if name in RAW_TEXT:
                pos = _skip_raw_text(src, pos, name)
            else:
                tree.start(name, attributes)
        elif char == "/":
            after = src[pos + 1 : pos + 2]
            if after and after in string.ascii_letters:
                tag = _read_tag(src, pos + 1)
                if tag is None:
                    break
                pos, name, _ = tag
                tree.end(name)
            else:
                pos = _after(src, pos, ">")  # `</>` and bogus comments
        elif char == "!" and src.startswith("!--", pos):
            pos = _skip_comment(src, pos + 3)
        elif char in ("!", "?"):
            pos = _after(src, pos, ">")  # doctype, CDATA outside foreign content, processing instructions
        else:
            tree.text("&lt;")
    return "".join(tree.out)


def _read_tag(src: str, pos: int) -> tuple[int, str, list[tuple[str, str | None]]] | None:
    """Read a tag from its name at `pos` to past its `>`; None if the input ends first."""
    match = _SIMPLE_TAG.match(src, pos)
    if match:
        found = _SIMPLE_ATTRIBUTES.findall(match.group(2))
        return (
            match.end(),
            match.group(1).lower(),
            [(n.lower(), q1 or q2 or bare) for n, q1, q2, bare in found],
        )
    match = _match_at(_TAG_NAME, src, pos)
    name, pos = match.group().lower(), match.end()
    attributes: list[tuple[str, str | None]] = []
    end = len(src)
    while True:
        pos = _match_at(_SKIP_SPACE_SLASH, src, pos).end()
        if pos >= end:
            return None
        if src[pos] == ">":
            return pos + 1, name, attributes
        match = _match_at(_ATTR_NAME, src, pos)  # src[pos] is neither space, "/" nor ">"
        attribute, pos = match.group().lower(), match.end()
        value = None
        equals = _EQUALS.match(src, pos)
        if equals:
            pos = equals.end()
            if pos >= end:
                return None
            if src[pos] in "\"'":
                close = src.find(src[pos], pos + 1)
                if close < 0:
                    return None
                value, pos = src[pos + 1 : close], close + 1
            else:
                match = _match_at(_UNQUOTED, src, pos)
                value, pos = match.group(), match.end()
        attributes.append((attribute, value))


def _match_at(pattern: re.Pattern[str], src: str, pos: int) -> re.Match[str]:
    """`pattern.match(src, pos)` where it cannot fail: the pattern matches the
    empty string, or the caller has seen the character it needs."""
    match = pattern.match(src, pos)
    if match is None:
        raise AssertionError(f"{pattern.pattern!r} does not match at {pos}")
    return match


def _after(src: str, pos: int, needle: str) -> int:
    found = src.find(needle, pos)
    return len(src) if found < 0 else found + len(needle)


def _skip_comment(src: str, pos: int) -> int:
    if src.startswith(">", pos):
        return pos + 1
    if src.startswith("->", pos):
        return pos + 2
    match = _COMMENT_END.search(src, pos)
    return match.end() if match else len(src)


def _skip_raw_text(src: str, pos: int, name: str) -> int:
    if name == "plaintext":
        return len(src)
    match = _RAW_TEXT_END[name].search(src, pos)
    if match is None:
        return len(src)
    tag = _read_tag(src, match.start() + 2)
    return len(src) if tag is None else tag[0]


class _Tree:
    """The stack of open elements of pass 1, with the stack positions of each
    name and category so that every scope question is answered in O(1)."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.stack: list[str] = []
        self.where: dict[str, list[int]] = {}
        self.dropping_from: int | None = None  # stack index of the subtree being dropped

    def text(self, text: str) -> None:
        if self.dropping_from is None:
            self.out.append(text)

    def start(self, name: str, attributes: list[tuple[str, str | None]]) -> None:
        if self.dropping_from is not None:
            if self.stack[self.dropping_from] in ("svg", "math") and name in _BREAKS_FOREIGN:
                self._close_to(self.dropping_from)
            else:
                if name in _PUSHED and len(self.stack) < MAX_DEPTH:
                    self._push(name)
                return
        if name not in ALLOWED_TAGS and name not in DROPPED_SUBTREES:
            return
        self._close_implied(name)
        if name in _VOID:
            self.out.append(_start_tag(name, attributes))
            return
        if len(self.stack) >= MAX_DEPTH:
            return
        if name in _FORMATTING and len(self.where.get("@formatting", ())) >= MAX_OPEN_FORMATTING:
            return
        self._push(name)
        if name in DROPPED_SUBTREES:
            self.dropping_from = len(self.stack) - 1
        else:
            self.out.append(_start_tag(name, attributes))

    def end(self, name: str) -> None:
        index = self._top(name)
        if index < 0:
            return
        if name in _TABLE_PARTS:
            boundary = self._top("@table_scope")
        elif name in _SPECIAL or name in _FORMATTING:
            boundary = self._top("@scope")
            if name == "li":
                boundary = max(boundary, self._top("ul"), self._top("ol"))
        else:
            boundary = self._top("@special")
        if boundary <= index:
            self._close_to(index, explicit=True)

    def _close_implied(self, name: str) -> None:
        if name == "li":
            self._close_if_above(self._top("li"), self._top("@li_stop"))
        elif name in ("dd", "dt"):
            self._close_if_above(self._top("@dd"), self._top("@dd_stop"))
        elif name in ("td", "th"):
            self._close_if_above(self._top("@cell"), self._top("table"))
        elif name == "tr":
            self._close_if_above(self._top("tr"), self._top("table"))
        elif name in TABLE_SECTIONS:
            self._close_if_above(self._top("@section"), self._top("table"))
        elif name == "a":
            self._close_if_above(self._top("a"), self._top("@marker"))
        if name in _CLOSES_P:
            self._close_if_above(self._top("p"), self._top("@scope"))
        if name in HEADINGS and self.stack and self.stack[-1] in HEADINGS:
            self._close_to(len(self.stack) - 1)

    def _close_if_above(self, index: int, boundary: int) -> None:
        if index > boundary:
            self._close_to(index)

    def _top(self, key: str) -> int:
        positions = self.where.get(key)
        return positions[-1] if positions else -1

    def _push(self, name: str) -> None:
        index = len(self.stack)
        self.stack.append(name)
        for key in _KEYS[name]:
            self.where.setdefault(key, []).append(index)

    def _close_to(self, index: int, *, explicit: bool = False) -> None:
        """Pop down to and including `index`. End tags are written out, so the
        parser in pass 2 closes what we close (formatting elements included, or
        it would reopen them); a `p` closed implicitly is not, since `</p>`
        with no `p` open makes an empty paragraph."""
        while len(self.stack) > index:
            name = self.stack.pop()
            position = len(self.stack)
            for key in _KEYS[name]:
                self.where[key].pop()
            if self.dropping_from is not None:
                if position == self.dropping_from:
                    self.dropping_from = None
                continue
            if name != "p" or (explicit and position == index):
                self.out.append(f"</{name}>")


def _start_tag(name: str, attributes: list[tuple[str, str | None]]) -> str:
    parts = [f"<{name}"]
    seen: set[str] = set()
    for attribute, value in attributes:
        if attribute in seen or not _VALID_ATTR.match(attribute):
            continue
        seen.add(attribute)
        parts.append(
            f" {attribute}" if value is None else f' {attribute}="{value.replace(chr(34), "&quot;")}"'
        )
        if len(seen) >= MAX_ATTRIBUTES:
            break
    parts.append(">")
    return "".join(parts)
