"""HTML bodies as plain text (for the search index, previews and the text
body of HTML-only mail), and the snippet of a text body."""

import re
from html import unescape

from .headers import CONTROL_CHARACTERS, WHITE_SPACE, clean_text

# HTML bodies are read as text for the search index, previews and the text
# body of HTML-only mail. At most this many characters of HTML are read (the
# index reads 100,000 characters of text; HTML is rarely under a fifth markup).
MAX_HTML_TEXT_INPUT = 500_000

# Elements whose content is never shown, dropped with it; comments too.
_HIDDEN_START = re.compile(r"<(?:(script|style|title)\b|!--)", re.IGNORECASE)
_HIDDEN_END = {
    name: re.compile(rf"</{name}\b[^>]*+>?", re.IGNORECASE) for name in ("script", "style", "title")
}
# The rest of a tag: attributes (a quoted value may hold ">") to the ">".
_TAG_REST = r"""(?:[^>"']++|"[^"]*+"|'[^']*+')*+>?"""
# A tag: "<" then a letter, "/", "!" or "?" (any other "<" is text), to the
# next ">" or the end. Block-level ones are line breaks, cells are spaces,
# the rest (inline) are nothing: "<b>H</b>ello" is one word.
_BLOCK_TAG = re.compile(
    r"<(?:/?(?:address|article|aside|blockquote|body|br|caption|center|dd|div|dl|dt|fieldset|figcaption"
    r"|figure|footer|form|h[1-6]|header|hr|html|li|main|nav|ol|p|pre|section|table|tbody|tfoot|thead|tr|ul)"
    r"(?![a-z0-9:-])" + _TAG_REST + ")",
    re.IGNORECASE,
)
_CELL_TAG = re.compile(r"</?t[dh](?![a-z0-9:-])" + _TAG_REST, re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[a-zA-Z!?]" + _TAG_REST)
# Characters that render as nothing: zero-width spaces and joiners, soft
# hyphens, byte order marks (newsletters pad their preheaders with them).
_INVISIBLE = re.compile("[\u00ad\u034f\u180e\u200b-\u200f\u2060-\u2064\ufeff]++")


def _drop_hidden(html: str) -> str:
    """Scripts, styles, titles and comments out, content and all, in one
    linear pass: an unclosed one hides the rest, as in a browser."""
    found = _HIDDEN_START.search(html)
    if found is None:
        return html
    out: list[str] = []
    position, end = 0, len(html)
    while found is not None:
        out.append(html[position : found.start()])
        name = found.group(1)
        if name:
            closing = _HIDDEN_END[name.lower()].search(html, found.end())
            position = end if closing is None else closing.end()
        else:
            comment_end = html.find("-->", found.end())
            position = end if comment_end < 0 else comment_end + 3
        found = _HIDDEN_START.search(html, position)
    out.append(html[position:])
    return "".join(out)


def html_to_text(html: str) -> str:
    """The text of an HTML body, as search and previews need it: hidden
    elements out, block elements as line breaks, every entity decoded,
    white space folded. Linear in the input, cut at MAX_HTML_TEXT_INPUT."""
    text = _drop_hidden(html[:MAX_HTML_TEXT_INPUT])
    if "<" in text:
        text = _ANY_TAG.sub("", _CELL_TAG.sub(" ", _BLOCK_TAG.sub("\n", text)))
    if "&" in text:
        text = unescape(text)
    if not text.isascii():
        text = _INVISIBLE.sub("", text)
    # White space folded, and empty lines out (str.split: C speed, every
    # Unicode space, controls included).
    lines = (" ".join(line.split()) for line in CONTROL_CHARACTERS.sub(" ", text).split("\n"))
    return clean_text("\n".join(line for line in lines if line))


def make_snippet(text: str, length: int = 200) -> str:
    return WHITE_SPACE.sub(" ", text[: length * 4]).strip()[:length]
