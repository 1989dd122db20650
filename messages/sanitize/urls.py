"""URLs as a browser reads them: cleaning, schemes, links and content ids."""

from __future__ import annotations

import re
from urllib.parse import unquote

_C0_AND_SPACE = "".join(map(chr, range(0x21)))
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
SCHEME_RELATIVE = re.compile(r"[/\\]{2}")
DATA_IMAGE = re.compile(r"data:image/(?:png|gif|jpeg|jpg|webp)(?:;[a-z0-9=._+-]*)*,", re.IGNORECASE)


def clean_url(value: str) -> str | None:
    """The URL as a browser reads it: C0 controls and spaces stripped at the
    ends, tabs and newlines removed inside; None if other controls remain."""
    url = value.strip(_C0_AND_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    return None if not url or CONTROL.search(url) else url


def url_scheme(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def is_remote(url: str, scheme: str | None) -> bool:
    return scheme in ("http", "https") or (scheme is None and bool(SCHEME_RELATIVE.match(url)))


def clean_link(value: str) -> str | None:
    url = clean_url(value)
    if url is None:
        return None
    scheme = url_scheme(url)
    if scheme in ("http", "https", "mailto", "tel"):
        return url
    if scheme is None and SCHEME_RELATIVE.match(url):
        return "https://" + url.lstrip("/\\")
    return None


def content_id(value: str) -> str:
    value = unquote(value.strip()).strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.lower()


def is_served_url(url: str) -> bool:
    """What a `cid_urls` value may be: ours, absolute or rooted, nothing to escape."""
    if CONTROL.search(url) or any(c in url for c in " \"'\\()<>"):
        return False
    return url_scheme(url) in ("http", "https") or (url.startswith("/") and not url.startswith("//"))
