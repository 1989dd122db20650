"""The sanitiser the API applies to a stored HTML body before serving it.

`sanitize_html` returns a fragment meant for a sandboxed container (an iframe
with `sandbox` and no `allow-scripts`); the sanitiser does not rely on the
sandbox, the sandbox does not rely on the sanitiser.

Two passes, and nh3 (ammonia, on html5ever: the HTML5 parsing algorithm
browsers use) has the last word:

1. `canonicalise` (`tree`) re-emits the input as plain, well-nested markup: comments,
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
   properties, and `AttributePolicy` (`policy`) as `attribute_filter`: nh3 calls it
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
- Any failure returns an empty fragment (logged, without the body), or is
  raised with `raise_errors=True`.

`sanitize_html` (here) runs the passes: `tree` (pass 1 and its bounds),
`policy` (the allow-lists and `AttributePolicy`), `css` (inline `style`
values and the CSS allow-list), `urls` (URL cleaning, schemes, content ids).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

import nh3
from redis.exceptions import RedisError

from .css import CSS_PROPERTIES, MAX_STYLE_LENGTH
from .policy import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    DROPPED_WITH_CONTENT,
    LINK_REL,
    URL_SCHEMES,
    AttributePolicy,
)
from .tree import MAX_ATTRIBUTES, MAX_DEPTH, MAX_OPEN_FORMATTING, canonicalise

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "ALLOWED_TAGS",
    "CSS_PROPERTIES",
    "DROPPED_WITH_CONTENT",
    "LINK_REL",
    "MAX_ATTRIBUTES",
    "MAX_DEPTH",
    "MAX_OPEN_FORMATTING",
    "MAX_STYLE_LENGTH",
    "URL_SCHEMES",
    "SanitizedHtml",
    "sanitize_html",
    "sanitize_html_for_reading",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SanitizedHtml:
    html: str
    remote_images_blocked: int  # how many remote image references were removed


def sanitize_html(
    html: str,
    *,
    cid_urls: Mapping[str, str] | None = None,
    allow_remote_images: bool = False,
    raise_errors: bool = False,
) -> SanitizedHtml:
    """Make a stored HTML body safe to serve; see the package docstring for the policy.
    `raise_errors`: a failure is logged and raised instead of returning an
    empty fragment (for a writer, who must not store the user's HTML as "")."""
    try:
        text = html.decode("utf-8", "replace") if isinstance(html, bytes) else str(html or "")
        # nh3 wants valid UTF-8: no lone surrogates. NUL is what the tokeniser makes of it.
        text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
        policy = AttributePolicy(cid_urls or {}, allow_remote_images=allow_remote_images)
        cleaned = nh3.clean(
            canonicalise(text),
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
        if raise_errors:
            raise
        return SanitizedHtml(html="", remote_images_blocked=0)


# --- What the API serves: capped, and cached ------------------------------------

# Bumped when the policy changes, so that no fragment cleaned by an older one is served.
# 2: zlib-compressed "<blocked>\n<fragment>", placeholders ended by "/".
SANITIZER_VERSION = 2
# The cache alias of sanitised fragments (settings.CACHES["html"], HTML_CACHE_URL).
CACHE_ALIAS = "html"
# Where the prefix's placeholders end: "/cid/<prefix>/1/" is not the start of
# "/cid/<prefix>/10/".
_PLACEHOLDER_END = "/"
# A Redis that cannot be reached is said once a minute, not once a request.
CACHE_DOWN_LOG_INTERVAL = 60.0
_cache_down = {"logged_at": float("-inf")}


def _placeholder_prefix() -> str:
    """A rooted path no mail can guess (it depends on SECRET_KEY): stands for
    an attachment's URL in a cached fragment, whose real URL (a signed token
    for one user, minutes long) is put in on each request."""
    from django.conf import settings

    digest = hmac.new(settings.SECRET_KEY.encode(), b"sanitize-cid-placeholder", hashlib.sha256)
    return f"/cid/{digest.hexdigest()[:32]}/"


def truncation_notice(*, shown: int, total: int) -> str:
    return (
        f"<p><strong>[Message truncated: its HTML is {total:,} characters; the first {shown:,} are shown."
        " Download the original message to read all of it.]</strong></p>"
    )


def _cache_unavailable(exc: BaseException) -> None:
    now = time.monotonic()
    if now - _cache_down["logged_at"] >= CACHE_DOWN_LOG_INTERVAL:
        _cache_down["logged_at"] = now
        logger.warning("sanitised HTML cache unavailable (%s); sanitising uncached", type(exc).__name__)


class _CacheUnavailable(Exception):
    pass


def _cache_get(key: str) -> tuple[str, int] | None:
    """The cached fragment and its count of blocked images, None when there
    is none; `_CacheUnavailable` when the cache cannot be read (said in the
    log), so that the caller does not wait for it a second time to write."""
    from django.core.cache import caches

    try:
        value = caches[CACHE_ALIAS].get(key)
    except (RedisError, OSError) as exc:
        _cache_unavailable(exc)
        raise _CacheUnavailable from exc
    if not isinstance(value, bytes):
        return None
    try:
        blocked, _, fragment = zlib.decompress(value).decode("utf-8", "surrogatepass").partition("\n")
        return fragment, int(blocked)
    except (zlib.error, UnicodeDecodeError, ValueError):
        return None  # not one of ours: sanitised again and overwritten


def _cache_set(key: str, fragment: str, blocked: int) -> None:
    from django.conf import settings
    from django.core.cache import caches

    value = zlib.compress(f"{blocked}\n{fragment}".encode("utf-8", "surrogatepass"), 6)
    try:
        caches[CACHE_ALIAS].set(key, value, settings.MAIL_HTML_CACHE_SECONDS)
    except (RedisError, OSError) as exc:
        _cache_unavailable(exc)


def sanitize_html_for_reading(
    html: str,
    *,
    message_id: object,
    cid_urls: Mapping[str, str],
    allow_remote_images: bool = False,
) -> tuple[SanitizedHtml, bool]:
    """`sanitize_html` as the message detail serves it: the body cut at
    MAIL_HTML_MAX_CHARS (a truncation notice after the fragment; the second
    value says it was cut), and the fragment of a body of at least
    MAIL_HTML_CACHE_MIN_CHARS cached, compressed, for MAIL_HTML_CACHE_SECONDS,
    per message, body, content ids, placeholder prefix and
    `allow_remote_images`: sanitising takes about 0.4-0.8 s per MB of HTML,
    and a client asks for the same message again and again (smaller bodies
    cost less to sanitise than their place in Redis is worth: README,
    Configuration). Attachment URLs go into the cache as placeholders and
    are replaced on the way out, so no user's signed URL is served to
    another. A failed sanitising is served as an empty fragment and not
    cached; a cache that cannot be reached is done without."""
    from django.conf import settings

    limit = settings.MAIL_HTML_MAX_CHARS
    text = html or ""
    truncated = len(text) > limit
    if truncated:
        # At a tag's start if one is near, not in the middle of a tag or a word.
        cut = text.rfind("<", limit - 10_000, limit)
        text = text[: cut if cut > 0 else limit]
    prefix = _placeholder_prefix()
    content_ids = sorted(cid_urls)
    placeholders = {cid: f"{prefix}{i}{_PLACEHOLDER_END}" for i, cid in enumerate(content_ids)}
    key = None
    if len(text) >= settings.MAIL_HTML_CACHE_MIN_CHARS:
        # The prefix is in the key: after SECRET_KEY changes, a fragment with
        # the old placeholders (which would no longer be replaced) is not read.
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
        digest.update("\x00".join(content_ids).encode("utf-8", "surrogatepass"))
        digest.update(b"\x00" + prefix.encode())
        key = f"mail:html:v{SANITIZER_VERSION}:{message_id}:{int(allow_remote_images)}:{digest.hexdigest()}"
    cached = None
    if key:
        try:
            cached = _cache_get(key)
        except _CacheUnavailable:
            key = None
    if cached is None:
        try:
            cleaned = sanitize_html(
                text, cid_urls=placeholders, allow_remote_images=allow_remote_images, raise_errors=True
            )
        except Exception:  # logged by sanitize_html; served empty, and not cached
            return SanitizedHtml(html="", remote_images_blocked=0), truncated
        fragment = cleaned.html
        if truncated:
            fragment += truncation_notice(shown=len(text), total=len(html))
        cached = (fragment, cleaned.remote_images_blocked)
        if key:
            _cache_set(key, *cached)
    fragment, blocked = cached
    if content_ids:
        # One pass over the fragment, each placeholder whole (with its end).
        urls = [escape(cid_urls[cid], quote=True) for cid in content_ids]
        pattern = re.compile(re.escape(prefix) + r"(\d{1,6})" + re.escape(_PLACEHOLDER_END))
        fragment = pattern.sub(lambda m: urls[int(m[1])] if int(m[1]) < len(urls) else "", fragment)
    return SanitizedHtml(html=fragment, remote_images_blocked=blocked), truncated
