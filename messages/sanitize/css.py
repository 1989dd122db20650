"""Inline `style` values: declarations kept one by one, as the package docstring says."""

from __future__ import annotations

import re
from collections.abc import Callable

from .urls import CONTROL

MAX_STYLE_LENGTH = 32_768

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
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)
CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^"'()\s]*))\s*\)""", re.IGNORECASE)
_CSS_FUNCTION = re.compile(r"([-a-z0-9_]*)\s*\(")
_CSS_PROPERTY = re.compile(r"-?[a-z][a-z0-9-]*\Z")


def clean_style(value: str, css_url: Callable[[re.Match[str]], str]) -> str | None:
    """The declarations of `value` worth keeping, each `url()` replaced by what
    `css_url` makes of its `CSS_URL` match; None if none are."""
    if len(value) > MAX_STYLE_LENGTH:
        return None
    value = _CSS_COMMENT.sub("", value)
    kept = [d for d in (_declaration(part, css_url) for part in value.split(";")) if d]
    return "; ".join(kept) or None


def _declaration(declaration: str, css_url: Callable[[re.Match[str]], str]) -> str | None:
    name, colon, value = declaration.partition(":")
    name, value = name.strip().lower(), " ".join(value.split())
    if not colon or not value or name not in CSS_PROPERTIES or not _CSS_PROPERTY.match(name):
        return None
    lowered = value.lower()
    if CONTROL.search(value) or any(bad in lowered for bad in _CSS_FORBIDDEN + _CSS_FORBIDDEN_CHARACTERS):
        return None
    if value.count('"') % 2 or value.count("'") % 2 or value.count("(") != value.count(")"):
        return None
    without_urls = CSS_URL.sub(" ", lowered)
    if any(function not in _CSS_FUNCTIONS for function in _CSS_FUNCTION.findall(without_urls) if function):
        return None  # including a `url(` the pattern could not read, `image-set(`, `var(` ...
    return f"{name}: {CSS_URL.sub(css_url, value)}"
