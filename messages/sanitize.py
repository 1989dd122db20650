"""The sanitiser the API applies to a stored HTML body before serving it.

`sanitize_html` returns a fragment meant for a sandboxed container (an iframe
with `sandbox` and no `allow-scripts`); the sanitiser does not rely on the
sandbox, the sandbox does not rely on the sanitiser.

Two passes, and nh3 (ammonia, on html5ever: the HTML5 parsing algorithm
browsers use) has the last word:

1. `_canonicalise` re-emits the input as plain, well-nested markup: comments,
   doctypes and raw-text elements (`script`, `style`, `title`, `textarea`,
   `noscript`, `iframe`, `xmp`, `noembed`, `noframes`, `plaintext`) go with
   their content; `svg`, `math`, `template`, `object`, `applet` and `select`
   go with everything inside them; only allowed tags are emitted, at most
   `MAX_DEPTH` deep, with at most `MAX_OPEN_FORMATTING` formatting elements
   (`b`, `font`, `a` ...) open at once and `MAX_ATTRIBUTES` attributes each.
   html5ever's tree builder is quadratic in nesting depth and in open
   formatting elements (40,000 nested `<div>` take seconds, 1,000 nested
   `<font>` with 30 attributes as many), and a bound read off the input would
   be as good as our guess at how a browser tokenises it; a bound on markup we
   wrote ourselves holds whatever the input was. This pass is only structural:
   what it gets wrong costs fidelity on broken HTML, never safety.
2. `nh3.clean` with allow-lists of tags, attributes, URL schemes and CSS
   properties, and `_AttributePolicy` as `attribute_filter`: nh3 calls it
   *after* its own scheme check and does not re-check what it returns, so it
   is the authority on every URL and every `style`.

Policy:

- `<style>` elements are dropped with their content. A stylesheet cannot be
  confined to the fragment without a CSS parser and selector rewriting (it
  would restyle the page around the container when one is not an iframe), and
  it is the widest door for tracking and injection (`@import`, `@font-face`,
  `url()` in any property). Senders inline their CSS for clients that do the
  same, so the common loss is responsive tweaks.
- Inline `style`: declarations are kept one by one when the property is in
  `CSS_PROPERTIES` (no `position`, `z-index`, `behavior`, `-moz-binding`,
  `cursor` ...), the value has no comment, escape, brace, `expression`,
  `javascript`, `vbscript` or `binding`, and calls no function outside
  `_CSS_FUNCTIONS`. `url()` keeps a cid mapped to its attachment URL, and a
  remote URL only with `allow_remote_images`; any other `url()` becomes
  `none`, so `background: #fff url(...)` keeps its colour. nh3's
  `filter_style_properties` then filters the same allow-list again.
- Images: `cid:` is rewritten through `cid_urls` (case-insensitive, with or
  without angle brackets or %-escapes), dropped when unknown. Remote
  references (http:, https:, protocol-relative) in `img src`, `srcset`,
  `background` and CSS `url()` are removed unless `allow_remote_images`, and
  counted: `remote_images_blocked` is how many references the same call with
  `allow_remote_images=True` would have kept. The URL is not kept in a
  `data-remote-src` attribute: nh3 can only drop or change an attribute, and a
  pass over its output to add one is how mutation XSS is made. A client
  offers "show images" by asking again with the flag. `data:` survives only
  in `img src`, and only for PNG, GIF, JPEG and WebP (never SVG).
- Links: http, https, mailto and tel; protocol-relative ones become https;
  every `<a>` gets `rel="noopener noreferrer nofollow"` and `target="_blank"`.
  Relative URLs are dropped everywhere (there is no base to resolve them
  against but our own origin); `id`, `name` and `class` are not kept either.
- Any failure returns an empty fragment (logged, without the body).
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import nh3

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SanitizedHtml:
    html: str
    remote_images_blocked: int  # how many remote image references were removed


MAX_DEPTH = 200
MAX_OPEN_FORMATTING = 16
MAX_ATTRIBUTES = 32
MAX_STYLE_LENGTH = 32_768

_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_TABLE_SECTIONS = frozenset({"tbody", "thead", "tfoot"})
_FORMATTING = frozenset(
    {"a", "b", "big", "code", "em", "font", "i", "s", "small", "strike", "strong", "tt", "u"}
)
ALLOWED_TAGS = frozenset(
    {
        *("a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote"),
        *("br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn"),
        *("div", "dl", "dt", "em", "figcaption", "figure", "font", "footer", "header", "hr", "i", "img"),
        *("ins", "kbd", "li", "main", "mark", "nav", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s"),
        *("samp", "section", "small", "span", "strike", "strong", "sub", "summary", "sup", "table"),
        *("td", "th", "time", "tr", "tt", "u", "ul", "var", "wbr"),
        *_HEADINGS,
        *_TABLE_SECTIONS,
    }
)
# Dropped with everything inside; the first group is raw text to the tokeniser.
_RAW_TEXT = frozenset(
    {"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes", "noscript", "plaintext"}
)
_DROPPED_SUBTREES = frozenset({"svg", "math", "template", "object", "applet", "select"})
DROPPED_WITH_CONTENT = _RAW_TEXT | _DROPPED_SUBTREES | {"frameset", "frame", "embed", "datalist"}
_VOID = frozenset(
    {"area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img", "input"}
    | {"keygen", "link", "meta", "param", "source", "track", "wbr"}
)

_TABLE_CELL = {"width", "height", "align", "valign", "bgcolor", "background", "colspan", "rowspan", "nowrap"}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"style", "title", "dir", "lang", "align"},
    "a": {"href"},
    "img": {"src", "srcset", "alt", "width", "height", "border", "hspace", "vspace"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "background", "summary"},
    "tr": {"height", "valign", "bgcolor", "background"},
    "td": _TABLE_CELL | {"scope", "abbr"},
    "th": _TABLE_CELL | {"scope", "abbr"},
    **{section: {"valign", "bgcolor"} for section in _TABLE_SECTIONS},
    "col": {"span", "width", "valign"},
    "colgroup": {"span", "width", "valign"},
    "font": {"color", "face", "size"},
    "hr": {"width", "size", "noshade", "color"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "blockquote": {"type"},
    "del": {"datetime"},
    "ins": {"datetime"},
    "time": {"datetime"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid", "data"})
LINK_REL = "noopener noreferrer nofollow"

_SIDES = ("top", "right", "bottom", "left")
CSS_PROPERTIES = frozenset(
    {
        *("background", "background-color", "background-image", "background-position", "background-repeat"),
        *("background-size", "border", "border-color", "border-style", "border-width", "border-radius"),
        *("border-collapse", "border-spacing", "box-sizing", "caption-side", "clear", "color", "direction"),
        *("display", "empty-cells", "float", "font", "font-family", "font-size", "font-style"),
        *("font-variant", "font-weight", "height", "letter-spacing", "line-height", "list-style"),
        *("list-style-position", "list-style-type", "margin", "max-height", "max-width", "min-height"),
        *("min-width", "opacity", "outline", "overflow", "overflow-wrap", "overflow-x", "overflow-y"),
        *("padding", "table-layout", "text-align", "text-decoration", "text-indent", "text-overflow"),
        *("text-transform", "vertical-align", "visibility", "white-space", "width", "word-break"),
        *("word-spacing", "word-wrap", "-webkit-text-size-adjust", "-ms-text-size-adjust"),
        *(f"{box}-{side}" for box in ("border", "margin", "padding") for side in _SIDES),
        *(f"border-{side}-{part}" for side in _SIDES for part in ("color", "style", "width")),
        *(f"border-{v}-{h}-radius" for v in ("top", "bottom") for h in ("left", "right")),
    }
)
_CSS_FUNCTIONS = frozenset(
    {"rgb", "rgba", "hsl", "hsla", "calc", "linear-gradient", "radial-gradient"}
    | {"repeating-linear-gradient", "repeating-radial-gradient"}
)
_CSS_FORBIDDEN = ("expression", "javascript", "vbscript", "binding", "behavior", "@import")
_CSS_FORBIDDEN_CHARACTERS = ("\\", "{", "}", "<")
_DATA_IMAGE = re.compile(r"data:image/(?:png|gif|jpeg|jpg|webp)(?:;[a-z0-9=._+-]*)*,", re.IGNORECASE)


def sanitize_html(
    html: str, *, cid_urls: Mapping[str, str] | None = None, allow_remote_images: bool = False
) -> SanitizedHtml:
    """Make a stored HTML body safe to serve; see the module docstring for the policy."""
    try:
        text = html.decode("utf-8", "replace") if isinstance(html, bytes) else str(html or "")
        # nh3 wants valid UTF-8: no lone surrogates. NUL is what the tokeniser makes of it.
        text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
        policy = _AttributePolicy(cid_urls or {}, allow_remote_images=allow_remote_images)
        cleaned = nh3.clean(
            _canonicalise(text),
            tags=set(ALLOWED_TAGS),
            clean_content_tags=set(DROPPED_WITH_CONTENT),
            attributes=ALLOWED_ATTRIBUTES,
            attribute_filter=policy,
            strip_comments=True,
            link_rel=LINK_REL,
            set_tag_attribute_values={"a": {"target": "_blank"}},
            url_schemes=set(URL_SCHEMES),
            filter_style_properties=set(CSS_PROPERTIES),
            url_relative=policy.relative_url,
        )
        return SanitizedHtml(html=cleaned, remote_images_blocked=policy.remote_images_blocked)
    except Exception as exc:
        length = len(html) if isinstance(html, str | bytes) else None
        logger.error("html_sanitize_failed", extra={"error": type(exc).__name__, "length": length})
        return SanitizedHtml(html="", remote_images_blocked=0)


# --- Pass 1: well-nested, bounded markup --------------------------------------------------------------

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
_RAW_TEXT_END = {name: re.compile(rf"</{name}[\t\n\f\r />]", re.IGNORECASE) for name in _RAW_TEXT}

# Which start tags close what, mirroring html5ever closely enough that the two agree on sane markup.
_CLOSES_P = (
    {"address", "article", "aside", "blockquote", "center", "details", "div", "dl", "figcaption", "figure"}
    | {"footer", "header", "hr", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "ul"}
    | {"li", "dd", "dt"}
    | _HEADINGS
)
_SPECIAL = (
    {"address", "applet", "article", "aside", "blockquote", "caption", "center", "colgroup", "dd", "details"}
    | {"div", "dl", "dt", "figcaption", "figure", "footer", "header", "li", "main", "nav", "object"}
    | {"ol", "p", "pre", "section", "select", "summary", "table", "td", "template", "th", "tr", "ul"}
    | _HEADINGS
    | _TABLE_SECTIONS
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
    "@section": _TABLE_SECTIONS,
    "@formatting": _FORMATTING,
}
_TABLE_PARTS = {"table", "caption", "colgroup", "tr", "td", "th"} | _TABLE_SECTIONS
_PUSHED = (ALLOWED_TAGS - _VOID) | _DROPPED_SUBTREES
_KEYS = {name: (name, *(key for key, names in _CATEGORIES.items() if name in names)) for name in _PUSHED}
# Start tags that end an <svg> or <math> in a browser, as they end our dropping of it.
_BREAKS_FOREIGN = (
    {"b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl", "dt", "em", "embed", "hr"}
    | {"i", "img", "li", "listing", "menu", "meta", "nobr", "ol", "p", "pre", "ruby", "s", "small", "span"}
    | {"strong", "strike", "sub", "sup", "table", "tt", "u", "ul", "var", "font"}
    | _HEADINGS
)


def _canonicalise(src: str) -> str:
    """Re-emit `src` as well-nested markup of allowed tags, bounded as the module docstring says.

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
            if name in _RAW_TEXT:
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
        if name not in ALLOWED_TAGS and name not in _DROPPED_SUBTREES:
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
        if name in _DROPPED_SUBTREES:
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
        elif name in _TABLE_SECTIONS:
            self._close_if_above(self._top("@section"), self._top("table"))
        elif name == "a":
            self._close_if_above(self._top("a"), self._top("@marker"))
        if name in _CLOSES_P:
            self._close_if_above(self._top("p"), self._top("@scope"))
        if name in _HEADINGS and self.stack and self.stack[-1] in _HEADINGS:
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


# --- Pass 2: URLs and styles, as nh3's attribute_filter -------------------------------------------------

_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_SCHEME_RELATIVE = re.compile(r"[/\\]{2}")
_SRCSET_DESCRIPTOR = re.compile(r"\d+(?:\.\d+)?[wx]\Z")
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^"'()\s]*))\s*\)""", re.IGNORECASE)
_CSS_FUNCTION = re.compile(r"([-a-z0-9_]*)\s*\(")
_CSS_PROPERTY = re.compile(r"-?[a-z][a-z0-9-]*\Z")


class _AttributePolicy:
    """nh3's `attribute_filter` for one call: returns the value to keep, or None."""

    def __init__(self, cid_urls: Mapping[str, str], *, allow_remote_images: bool) -> None:
        self.cid_urls = {
            _content_id(key): url
            for key, url in cid_urls.items()
            if isinstance(url, str) and _is_served_url(url)
        }
        self.allow_remote_images = allow_remote_images
        self.remote_images_blocked = 0

    def __call__(self, tag: str, attribute: str, value: str) -> str | None:
        try:
            return self._filter(tag, attribute, value)
        except Exception:  # never let a surprise keep an attribute
            return None

    def relative_url(self, url: str) -> str | None:
        """nh3's `url_relative`: the only relative URLs are our attachment URLs."""
        return url if url in self.cid_urls.values() else None

    def _filter(self, tag: str, attribute: str, value: str) -> str | None:
        if attribute.startswith("on"):
            return None
        if attribute == "style":
            return self._style(value)
        if attribute == "href":
            return _link(value) if tag == "a" else None
        if attribute == "src":
            return self._image(value, allow_data=True) if tag == "img" else None
        if attribute == "background":
            return self._image(value, allow_data=False)
        if attribute == "srcset":
            return self._srcset(value)
        if attribute == "target":
            return "_blank"
        if attribute == "rel":
            return LINK_REL
        return value

    def _image(self, value: str, *, allow_data: bool) -> str | None:
        url = _clean_url(value)
        if url is None:
            return None
        scheme = _scheme(url)
        if scheme == "cid":
            return self.cid_urls.get(_content_id(url[4:]))
        if _is_remote(url, scheme):
            return self._remote(url, scheme)
        if scheme == "data" and allow_data and _DATA_IMAGE.match(url):
            return url
        return None

    def _remote(self, url: str, scheme: str | None) -> str | None:
        if not self.allow_remote_images:
            self.remote_images_blocked += 1
            return None
        return url if scheme else "https://" + url.lstrip("/\\")

    def _srcset(self, value: str) -> str | None:
        candidates = []
        for candidate in value.split(","):
            parts = candidate.split()
            url = _clean_url(parts[0]) if parts else None
            if url is None or not _is_remote(url, _scheme(url)) or len(parts) > 2:
                return None
            if len(parts) == 2 and not _SRCSET_DESCRIPTOR.match(parts[1]):
                return None
            candidates.append((url, parts[1:]))
        if not candidates:
            return None
        if not self.allow_remote_images:
            self.remote_images_blocked += 1
            return None
        return ", ".join(" ".join([self._remote(url, _scheme(url)) or "", *rest]) for url, rest in candidates)

    def _style(self, value: str) -> str | None:
        if len(value) > MAX_STYLE_LENGTH:
            return None
        value = _CSS_COMMENT.sub("", value)
        kept = [d for d in map(self._declaration, value.split(";")) if d]
        return "; ".join(kept) or None

    def _declaration(self, declaration: str) -> str | None:
        name, colon, value = declaration.partition(":")
        name, value = name.strip().lower(), " ".join(value.split())
        if not colon or not value or name not in CSS_PROPERTIES or not _CSS_PROPERTY.match(name):
            return None
        lowered = value.lower()
        if _CONTROL.search(value) or any(
            bad in lowered for bad in _CSS_FORBIDDEN + _CSS_FORBIDDEN_CHARACTERS
        ):
            return None
        if value.count('"') % 2 or value.count("'") % 2 or value.count("(") != value.count(")"):
            return None
        without_urls = _CSS_URL.sub(" ", lowered)
        if any(
            function not in _CSS_FUNCTIONS for function in _CSS_FUNCTION.findall(without_urls) if function
        ):
            return None  # including a `url(` the pattern could not read, `image-set(`, `var(` ...
        return f"{name}: {_CSS_URL.sub(self._css_url, value)}"

    def _css_url(self, match: re.Match[str]) -> str:
        url = _clean_url(next(group for group in match.groups() if group is not None))
        if url is None or any(c in url for c in "\"'\\()"):
            return "none"
        scheme = _scheme(url)
        if scheme == "cid":
            kept = self.cid_urls.get(_content_id(url[4:]))
        elif _is_remote(url, scheme):
            kept = self._remote(url, scheme)
        else:
            kept = None
        return "none" if kept is None else f'url("{kept}")'


def _clean_url(value: str) -> str | None:
    """The URL as a browser reads it: C0 controls and spaces stripped at the
    ends, tabs and newlines removed inside; None if other controls remain."""
    url = value.strip(_C0_AND_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    return None if not url or _CONTROL.search(url) else url


def _scheme(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def _is_remote(url: str, scheme: str | None) -> bool:
    return scheme in ("http", "https") or (scheme is None and bool(_SCHEME_RELATIVE.match(url)))


def _link(value: str) -> str | None:
    url = _clean_url(value)
    if url is None:
        return None
    scheme = _scheme(url)
    if scheme in ("http", "https", "mailto", "tel"):
        return url
    if scheme is None and _SCHEME_RELATIVE.match(url):
        return "https://" + url.lstrip("/\\")
    return None


def _content_id(value: str) -> str:
    value = unquote(value.strip()).strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.lower()


def _is_served_url(url: str) -> bool:
    """What a `cid_urls` value may be: ours, absolute or rooted, nothing to escape."""
    if _CONTROL.search(url) or any(c in url for c in " \"'\\()<>"):
        return False
    return _scheme(url) in ("http", "https") or (url.startswith("/") and not url.startswith("//"))
