"""The allow-lists handed to nh3 and `AttributePolicy`, its `attribute_filter`."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .css import clean_style
from .urls import DATA_IMAGE, clean_link, clean_url, content_id, is_remote, is_served_url, url_scheme

HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
TABLE_SECTIONS = frozenset({"tbody", "thead", "tfoot"})
ALLOWED_TAGS = frozenset(
    {
        *("a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote"),
        *("br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn"),
        *("div", "dl", "dt", "em", "figcaption", "figure", "font", "footer", "header", "hr", "i", "img"),
        *("ins", "kbd", "li", "main", "mark", "nav", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s"),
        *("samp", "section", "small", "span", "strike", "strong", "sub", "summary", "sup", "table"),
        *("td", "th", "time", "tr", "tt", "u", "ul", "var", "wbr"),
        *HEADINGS,
        *TABLE_SECTIONS,
    }
)
# Dropped with everything inside; the first group is raw text to the tokeniser.
RAW_TEXT = frozenset(
    {"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes", "noscript", "plaintext"}
)
DROPPED_SUBTREES = frozenset({"svg", "math", "template", "object", "applet", "select"})
DROPPED_WITH_CONTENT = RAW_TEXT | DROPPED_SUBTREES | {"frameset", "frame", "embed", "datalist"}

_TABLE_CELL = {"width", "height", "align", "valign", "bgcolor", "background", "colspan", "rowspan", "nowrap"}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"style", "title", "dir", "lang", "align"},
    "a": {"href"},
    "img": {"src", "srcset", "alt", "width", "height", "border", "hspace", "vspace"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "background", "summary"},
    "tr": {"height", "valign", "bgcolor", "background"},
    "td": _TABLE_CELL | {"scope", "abbr"},
    "th": _TABLE_CELL | {"scope", "abbr"},
    **{section: {"valign", "bgcolor"} for section in TABLE_SECTIONS},
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

_SRCSET_DESCRIPTOR = re.compile(r"\d+(?:\.\d+)?[wx]\Z")


class AttributePolicy:
    """nh3's `attribute_filter` for one call: returns the value to keep, or None."""

    def __init__(self, cid_urls: Mapping[str, str], *, allow_remote_images: bool) -> None:
        self.cid_urls = {
            content_id(key): url
            for key, url in cid_urls.items()
            if isinstance(url, str) and is_served_url(url)
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
            return clean_link(value) if tag == "a" else None
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
        url = clean_url(value)
        if url is None:
            return None
        scheme = url_scheme(url)
        if scheme == "cid":
            return self.cid_urls.get(content_id(url[4:]))
        if is_remote(url, scheme):
            return self._remote(url, scheme)
        if scheme == "data" and allow_data and DATA_IMAGE.match(url):
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
            url = clean_url(parts[0]) if parts else None
            if url is None or not is_remote(url, url_scheme(url)) or len(parts) > 2:
                return None
            if len(parts) == 2 and not _SRCSET_DESCRIPTOR.match(parts[1]):
                return None
            candidates.append((url, parts[1:]))
        if not candidates:
            return None
        if not self.allow_remote_images:
            self.remote_images_blocked += 1
            return None
        return ", ".join(
            " ".join([self._remote(url, url_scheme(url)) or "", *rest]) for url, rest in candidates
        )

    def _style(self, value: str) -> str | None:
        return clean_style(value, self._css_url)

    def _css_url(self, match: re.Match[str]) -> str:
        url = clean_url(next(group for group in match.groups() if group is not None))
        if url is None or any(c in url for c in "\"'\\()"):
            return "none"
        scheme = url_scheme(url)
        if scheme == "cid":
            kept = self.cid_urls.get(content_id(url[4:]))
        elif is_remote(url, scheme):
            kept = self._remote(url, scheme)
        else:
            kept = None
        return "none" if kept is None else f'url("{kept}")'
