"""The parser on real and malformed mail from the shared corpus."""

import base64
import email
import time
import tracemalloc
from email.policy import compat32
from email.utils import getaddresses

import pytest

from messages import parsing
from messages.parsing import (
    Limits,
    MessageRejected,
    decode_header_value,
    html_to_text,
    message_id,
    message_ids,
    mime,
    parse_message,
    parts,
    reference_ids,
)
from messages.parsing.addresses import _split_addresses
from messages.tests.corpus import CORPUS_DIR, corpus_files

ALL = corpus_files()


def test_the_corpus_is_there():
    assert CORPUS_DIR.is_dir(), f"corpus missing at {CORPUS_DIR}"
    assert len(ALL) > 400


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CORPUS_DIR)))
def test_every_corpus_file_parses_or_is_refused_with_a_reason(path):
    raw = path.read_bytes()
    try:
        parsed = parse_message(raw)
    except MessageRejected as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert len(reason) > 5
        return
    for text in (parsed.subject, parsed.text_body, parsed.html_body, parsed.from_name, parsed.snippet):
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates: PostgreSQL would refuse them
    for attachment in parsed.attachments:
        assert len(attachment.sha256) == 64
        attachment.filename.encode("utf-8")
        assert "/" not in attachment.filename


def corpus(name: str) -> bytes:
    return (CORPUS_DIR / "mime-parser-cases" / name).read_bytes()


def test_raw_latin1_bytes_inside_encoded_words_and_8bit_filenames():
    parsed = parse_message(corpus("legacy/023.eml"))
    assert parsed.subject == "Die Hasen und die Frösche"
    assert parsed.to == [{"name": "Jürgen Schmürgen", "address": "jschmuergen@example.com"}]
    assert "HasenundFrösche.txt" in [a.filename for a in parsed.attachments]


def test_headers_rfc2047_and_2231():
    assert decode_header_value("=?utf-8?q?J=C3=BCrgen?= =?iso-8859-1?b?U2NobfxyZ2Vu?=") == "JürgenSchmürgen"
    assert decode_header_value("=?x-unknown-charset?q?caf=E9?=") == "café"
    assert decode_header_value("=?utf-8?b?!!!not-base64?=") != ""
    raw = (
        b"From: a@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20rates.pdf\r\n\r\nDATA\r\n--b--\r\n"
    )
    parsed = parse_message(raw)
    assert [a.filename for a in parsed.attachments] == ["€ rates.pdf"]
    assert parsed.text_body.strip() == "hi"


def test_nul_bytes_and_undecodable_bodies_are_replaced_not_fatal():
    raw = (
        b"From: a@b.c\r\nSubject: nul\x00here\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"\r\nbad \xff\xfe \x00 end"
    )
    parsed = parse_message(raw)
    assert "\x00" not in parsed.subject and "\x00" not in parsed.text_body
    assert parsed.text_body.startswith("bad ")


def test_not_mail_is_refused():
    with pytest.raises(MessageRejected, match="not an RFC 5322 message"):
        parse_message(b"\x89PNG\r\n\x1a\n binary junk")
    with pytest.raises(MessageRejected, match="empty"):
        parse_message(b"   \r\n")


def test_limits_quarantine_reasons():
    big = b"From: a@b.c\r\nSubject: big\r\n\r\n" + b"x" * 2000
    with pytest.raises(MessageRejected, match="over the 1000-byte limit"):
        parse_message(big, Limits(max_message_bytes=1000))
    nested = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for depth in range(1, 8):
        nested += f"--b{depth - 1}\r\nContent-Type: multipart/mixed; boundary=b{depth}\r\n\r\n".encode()
    with pytest.raises(MessageRejected, match="nesting deeper than 3"):
        parse_message(nested, Limits(max_depth=3))
    header = b"From: a@b.c\r\nX-Long: " + b"y" * 5000 + b"\r\n\r\nbody"
    with pytest.raises(MessageRejected, match="header over"):
        parse_message(header, Limits(max_header_bytes=1000))


def test_references_and_ids():
    assert message_ids("<a@x> <b@y>\r\n <a@x> junk <c@z>") == ["a@x", "b@y", "c@z"]
    # git send-email --in-reply-to=yes: an id, but no reference
    assert message_ids("<yes>") == ["yes"]
    assert reference_ids("<a@x> <yes> <YES>") == ["a@x"]
    # placeholders broken clients write: no reference either, or they would chain unrelated mail
    assert reference_ids("<null> <a@x> <None> <undefined> <0> <unknown>") == ["a@x"]
    assert message_ids("<null>") == ["null"]
    assert message_ids("<>  < >") == []
    assert message_id(None) == message_id("") == message_id("   ") == ""


# (header value as written, the id kept): the text from "<" to the next ">"
# (or the end), or the whole value without any "<"; white space removed.
ID_SHAPES = [
    ("<1234.5678@example.com>", "1234.5678@example.com"),
    ("<no-at-sign-1234>", "no-at-sign-1234"),
    ("<spaces inside @ example.com>", "spacesinside@example.com"),
    ('<"quoted local part"@example.com>', '"quotedlocalpart"@example.com'),
    ("  bare.id@example.com  ", "bare.id@example.com"),
    ("bare id without brackets", "bareidwithoutbrackets"),
    ("<folded-in-mid\r\n id@example.com>", "folded-in-midid@example.com"),
    (
        "<abc@host\r\n\tReceived: from mx by host; Mon, 1 Jan 2024 00:00:00 +0000>",
        "abc@hostReceived:frommxbyhost;Mon,1Jan202400:00:00+0000",
    ),
    ("<unclosed@example.com", "unclosed@example.com"),
    ("<first@x> <second@y>", "first@x"),
    ("(comment) <id@x> (trailing)", "id@x"),
]


@pytest.mark.parametrize(("value", "expected"), ID_SHAPES, ids=[e for _, e in ID_SHAPES])
def test_message_id_shapes_are_kept_as_written(value, expected):
    assert message_id(value) == expected
    # In-Reply-To and References read the same way, so a reply finds it.
    assert message_ids(value)[0] == expected
    raw = f"From: a@b.c\r\nMessage-ID: {value}\r\nIn-Reply-To: {value}\r\nReferences: {value}\r\n\r\nbody"
    parsed = parse_message(raw.encode())
    assert parsed.message_id == parsed.in_reply_to == parsed.references[0] == expected
    assert not parsed.message_id_synthetic


def test_over_long_ids_are_cut_the_same_way_everywhere():
    long_id = "é" * 900 + "@x"
    kept = message_id(f"<{long_id}>")
    assert len(kept) == 250
    assert kept.startswith("é" * 185 + "~")
    assert kept == message_ids(f"<a@b> <{long_id}>")[1] == reference_ids(f"<{long_id}>")[0]
    # Two ids that share their first 250 characters stay apart.
    assert message_id(f"<{long_id}1>") != kept
    assert message_id("<" + "x" * 250 + ">") == "x" * 250


def test_a_message_without_message_id_gets_a_stable_synthetic_one():
    raw = b"From: a@b.c\r\nSubject: no id\r\n\r\nbody"
    first, again = parse_message(raw), parse_message(raw)
    assert first.message_id_synthetic
    assert first.message_id == again.message_id
    assert first.message_id.endswith("@synthetic.invalid")
    assert parse_message(raw + b"!").message_id != first.message_id
    empty = parse_message(b"From: a@b.c\r\nMessage-ID: <>\r\n\r\nbody")
    assert empty.message_id_synthetic


def test_html_to_text():
    html = (
        "<html><head><title>Title</title><style>p { color: red }</style></head><body>"
        "<p>Caf&eacute; &amp; cr&egrave;me&nbsp;br&ucirc;l&eacute;e &#x2603; &#8364;5</p>"
        "<div>Hi <b>th</b>ere<script>alert('x < y')</script>!</div><!-- hidden > text -->"
        "<ul><li>one<li>two</ul><table><tr><td>a</td><td>b</td></tr></table>"
        "a &lt; b, 1 < 2<br>in&shy;visible&zwnj; &ZeroWidthSpace;end</body></html>"
    )
    assert (
        html_to_text(html)
        == "Café & crème brûlée ☃ €5\nHi there!\none\ntwo\na b\na < b, 1 < 2\ninvisible end"
    )
    assert html_to_text("<p>&lt;b&gt;not a tag&lt;/b&gt;</p>") == "<b>not a tag</b>"
    assert html_to_text("<SCRIPT>x</SCRIPT >y<style>unclosed") == "y"
    assert html_to_text("text <unclosed tag") == "text"
    # notmuch's case: a quoted attribute value may hold ">"; it is no text.
    assert html_to_text('<body><input value="a>swordfish">\n</body>hunter2') == "hunter2"


def test_html_only_mail_has_a_text_body_and_preview():
    raw = (
        b"From: a@b.c\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><style>.x{}</style><p>Caf&eacute; <i>menu</i></p><p>Second&nbsp;line</p></html>"
    )
    parsed = parse_message(raw)
    assert parsed.text_body == "Café menu\nSecond line"
    assert parsed.snippet == "Café menu Second line"
    both = parse_message(
        b"From: a@b.c\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--b--\r\n"
    )
    assert both.text_body == "plain words"


def _address_headers():
    for path in corpus_files("notmuch"):
        for line in path.read_bytes().split(b"\n\n", 1)[0].decode("latin-1").splitlines():
            if line.lower().startswith(("to:", "cc:", "from:")) and "=?" not in line:
                yield line.split(":", 1)[1].strip()


def test_fast_address_split_agrees_with_getaddresses_on_the_corpus():
    headers = list(_address_headers())
    assert len(headers) > 100
    for value in headers:
        assert _split_addresses(value) == getaddresses([value]), value


@pytest.fixture
def complexity_guard():
    """Fails a test that runs for minutes instead of milliseconds: a guard
    against catastrophic backtracking, not a speed target (see bench/)."""
    import signal

    def timeout(signum, frame):
        raise AssertionError("parsing took over 10 s: super-linear behaviour on hostile input")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_hostile_address_header_is_linear(complexity_guard):
    # 250 KB of spaces after a name with no "<": the old regex backtracked for 50 s.
    parsed = parse_message(b"From: x@y.z\r\nTo: a" + b" " * 250_000 + b"\r\nSubject: s\r\n\r\nbody")
    assert parsed.subject == "s"


def test_hostile_html_is_linear(complexity_guard):
    # Unclosed <style and lone "<", 200 KB of them: the old tag regex took 25 s.
    parsed = parse_message(b"From: x@y.z\r\nContent-Type: text/html\r\n\r\n" + b"<style<" * 30_000)
    assert parsed.html_body.startswith("<style<")
    assert parsed.text_body == ""  # all of it is an unclosed style: nothing shown
    assert html_to_text("<" * 200_000) == "<" * 200_000
    for hostile in ("<script", "<!--", "<a ", "<p", "&", "&#"):
        html_to_text(hostile * 100_000)


def test_obsolete_space_before_colon_keeps_the_header():
    parsed = parse_message(corpus("malformed/019.eml"))
    assert parsed.message_id == "multi-001@example.test"
    assert parsed.subject == "Sprint 3 multipart fixture"


def _tree(msg):
    """Everything of a compat32 message tree the parser reads, and more."""
    payload = msg._payload
    return (
        msg._headers,
        msg.preamble,
        msg.epilogue,
        [type(d).__name__ for d in msg.defects],
        msg.get_default_type(),
        msg.get_unixfrom(),
        [_tree(part) for part in payload] if isinstance(payload, list) else payload,
    )


def _fast_tree(raw: bytes):
    if b"\r" in raw and raw.count(b"\r") != raw.count(b"\r\n"):
        return None
    try:
        return mime._fast_part(raw, 0, len(raw), 0, mime._Budget(Limits()))
    except mime._Unusual:
        return None


def test_fast_mime_tree_is_the_feedparsers_tree_on_the_corpus():
    fast = 0
    for path in ALL:
        raw = parsing._normalise_obsolete_fields(path.read_bytes())
        tree = _fast_tree(raw)
        if tree is None:
            continue  # declined: parse_message uses the FeedParser itself
        fast += 1
        assert _tree(tree) == _tree(email.message_from_bytes(raw, policy=compat32)), path
    assert fast > 0.8 * len(ALL)  # the fast path is the common one


@pytest.mark.parametrize(
    "raw",
    [
        # nested multiparts, preamble and epilogue, CRLF
        b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=out\r\n\r\npre\r\n--out\r\n"
        b"Content-Type: multipart/alternative; boundary=in\r\n\r\n--in\r\n\r\ntext\r\n--in\r\n"
        b"Content-Type: text/html\r\n\r\n<p>x</p>\r\n--in--\r\nin-epilogue\r\n--out\r\n"
        b"Content-Type: text/plain\r\n\r\nlast\r\n\r\n--out-- \t\r\nepilogue\r\n",
        # an inner part without its close boundary; a boundary that is a prefix of another
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: multipart/mixed; boundary=bb\n\n--bb\n\nx\n--b\n\ny\n--b--\n",
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b\n\n--bx\n--b\n\n--b-x\n--b--",
        # repeated boundaries, no close boundary, no start boundary, a lone CR
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\nx\n--b--\n",
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n",
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b\n\nno parts\n",
        b"From: a@b.c\rSubject: cr\r\n\r\nbody\r",
        # headers: continuation first, a body line without separator, From_ lines
        b" folded: x\nFrom: a@b.c\n\nbody",
        b"From: a@b.c\nnot a header\nbody",
        b"From a@b.c Mon Jan  1 00:00:00 2024\nFrom: a@b.c\n\nbody",
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n--b--\n",
        b"From: a@b.c\nContent-Type: multipart/digest; boundary=b\n\n--b\n\nx\n--b--\n",
        b"From: a@b.c\nContent-Type: message/rfc822\n\nFrom: c@d.e\n\ninner\n",
        # enclosed messages inside multiparts: the line break before a
        # boundary is taken from the innermost last part
        b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\n"
        b"Content-Type: message/rfc822\r\n\r\nFrom: c@d.e\r\n\r\ninner \xe9\r\n\r\n--b--\r\n",
        b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n"
        b"Content-Type: message/rfc822\n\nContent-Type: multipart/alternative; boundary=c\n\n--c\n\ny\n"
        b"--c--\nepilogue\n\n--b\nContent-Type: message/rfc822\n\nFrom: e@f.g\n\n--b--\n",
        b"From: a@b.c\nContent-Type: message/delivery-status\n\nReporting-MTA: x\n\nStatus: 5.0.0\n",
        b"From: a@b.c\nContent-Type: multipart/mixed\n\nno boundary\n",
    ],
)
def test_fast_mime_tree_matches_or_declines_on_odd_structures(raw):
    reference = email.message_from_bytes(raw, policy=compat32)
    tree = _fast_tree(raw)
    if tree is not None:
        assert _tree(tree) == _tree(reference)
    assert _tree(mime.mime_tree(raw)) == _tree(reference)


@pytest.mark.parametrize(
    "encoded",
    [
        base64.encodebytes(bytes(range(256)) * 400),  # clean, 76-character lines
        base64.encodebytes(bytes(range(256)) * 400).replace(b"\n", b"\r\n"),
        base64.encodebytes(bytes(range(256)) * 400 + b"x"),  # padded
        base64.encodebytes(bytes(range(256)) * 400)[:-3] + b"\n",  # padding missing
        b"!!" + base64.encodebytes(bytes(range(256)) * 400),  # characters outside the alphabet
    ],
)
def test_large_base64_parts_decode_as_email_decodes_them(encoded):
    raw = (
        b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\ntext\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"\r\n--b--\r\n"
    )
    part = email.message_from_bytes(raw, policy=compat32).get_payload()[1]
    assert len(part.get_payload()) > parts._LARGE_PART
    assert parts._payload_bytes(part) == part.get_payload(decode=True)
    assert parse_message(raw).attachments[0].data == part.get_payload(decode=True)


# --- Limits met while the tree is built (issue 14, section 1) ---------------------


def _parse_peak(raw: bytes, limits: Limits | None = None) -> tuple[str, int]:
    """The rejection's reason and the most memory Python held meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(MessageRejected) as rejected:
            parse_message(raw, limits)
        return rejected.value.reason, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _multipart(body: bytes, *, lone_cr: bool = False, boundary: bytes = b"b") -> bytes:
    """A multipart message; a lone CR in its preamble sends it to the
    FeedParser instead of the fast splitter."""
    preamble = b"pre\ramble\r\n" if lone_cr else b""
    return (
        (b"From: a@b.c\r\nSubject: test\r\nContent-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n")
        + preamble
        + body
    )


@pytest.mark.parametrize("lone_cr", [False, True], ids=["fast splitter", "FeedParser"])
def test_too_many_parts_stop_the_parser_before_the_tree_is_built(lone_cr):
    # 400,000 empty parts in 3 MB (and under MAIL_MAX_LINES): the whole tree
    # would take ~400 MB.
    raw = _multipart(b"--b\r\n\r\n" * 400_000 + b"--b--\r\n", lone_cr=lone_cr)
    reason, peak = _parse_peak(raw, Limits(max_lines=1_000_000))
    assert reason == "more than 1000 MIME parts"
    assert peak < 3 * len(raw)  # the bytes and their text, not a tree


def _nested(levels: int, inner: bytes, *, lone_cr: bool = False) -> bytes:
    body = b"--n00000\r\n"
    for level in range(1, levels):
        body += b"Content-Type: multipart/mixed; boundary=n%05d\r\n\r\n--n%05d\r\n" % (level, level)
    return _multipart(body + inner, lone_cr=lone_cr, boundary=b"n00000")


@pytest.mark.parametrize("lone_cr", [False, True], ids=["fast splitter", "FeedParser"])
def test_deep_nesting_stops_the_parser_at_the_limit(lone_cr):
    # 5,000 levels: the FeedParser recursed to a RecursionError.
    raw = _nested(5000, b"\r\nbottom\r\n", lone_cr=lone_cr)
    assert _parse_peak(raw)[0] == "MIME nesting deeper than 30"


@pytest.mark.parametrize("lone_cr", [False, True], ids=["fast splitter", "FeedParser"])
def test_a_parts_header_is_bounded_like_the_messages(lone_cr):
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(100_000))
    raw = _multipart(b"--b\r\n" + fields + b"\r\nbody\r\n--b--\r\n", lone_cr=lone_cr)
    assert _parse_peak(raw)[0] == "a MIME part's header is over the 262144-byte limit"


@pytest.mark.parametrize("lone_cr", [False, True], ids=["fast splitter", "FeedParser"])
def test_header_fields_of_all_parts_together_are_bounded(lone_cr):
    raw = _multipart(
        b"--b\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\nbody\r\n" * 20 + b"--b--\r\n", lone_cr=lone_cr
    )
    assert "body" in parse_message(raw, Limits(max_header_fields=63)).text_body  # 3 + 20 * 3 fields
    with pytest.raises(MessageRejected, match=r"^more than 62 header fields$"):
        parse_message(raw, Limits(max_header_fields=62))


def test_lines_that_look_like_boundaries_are_bounded():
    # Boundaries a, aa, aaa...: each body line starts with every one of them
    # and was a turn of the splitter's loop at every level.
    raw = b"From: a@b.c\r\n"
    for level in range(1, 21):
        raw += b"Content-Type: multipart/mixed; boundary=%s\r\n\r\n--%s\r\n" % (b"a" * level, b"a" * level)
    raw += b"\r\n" + (b"--" + b"a" * 30 + b"x\r\n") * 200_000
    started = time.monotonic()
    with pytest.raises(MessageRejected) as rejected:
        parse_message(raw)
    assert (
        rejected.value.reason == f"more than {mime.MAX_BOUNDARY_MISSES} lines that look like MIME boundaries"
    )
    assert time.monotonic() - started < 2  # ~0.1 s; a turn per line at each level was ~10 s


def test_the_feedparsers_line_checks_are_bounded():
    # 20 open levels: each line is tested against 20 boundaries.
    raw = _nested(20, b"\r\n" + b"line\r\n" * 200_000, lone_cr=True)
    with pytest.raises(MessageRejected, match=rf"^more than {mime.MAX_LINE_CHECKS} line checks"):
        parse_message(raw, Limits(max_lines=1_000_000))


def test_the_feedparser_is_given_a_bounded_number_of_lines():
    raw = b"From: a@b.c\r\nSubject: lines\r\n\r\nbody\rwith a lone CR\r\n" + b"\r\n" * 2000
    assert parse_message(raw, Limits(max_lines=3000)).subject == "lines"
    with pytest.raises(MessageRejected, match=r"^more than 1000 lines in a message of unusual structure"):
        parse_message(raw, Limits(max_lines=1000))
    # Lone CRs end lines for the FeedParser as well.
    with pytest.raises(MessageRejected, match=r"^more than 1000 lines in a message of unusual structure"):
        parse_message(b"From: a@b.c\r\nSubject: cr\r\n\r\n" + b"\r" * 2000, Limits(max_lines=1000))
    # The fast splitter keeps no str per line: it is not bounded so.
    assert parse_message(raw.replace(b"\r", b""), Limits(max_lines=1000)).subject == "lines"


def test_the_fast_splitter_and_the_feedparser_build_the_same_tree_within_the_limits():
    for lone_cr in (False, True):
        raw = _multipart(b"--b\r\n\r\n" * 999 + b"--b--\r\n", lone_cr=lone_cr)  # with the message: 1000
        assert _tree(mime.mime_tree(raw)) == _tree(email.message_from_bytes(raw, policy=compat32))


def test_address_lists_and_references_are_bounded():
    to = ", ".join(f"u{i}@example.com" for i in range(800))
    more = ", ".join(f"u{i}@example.com" for i in range(800, 1600))
    references = " ".join(f"<r{i}@example.com>" for i in range(5000))
    raw = (
        f"From: a@b.c\r\nTo: {to}\r\nTo: {more}\r\nReferences: {references}\r\nSubject: many\r\n\r\nbody\r\n"
    ).encode()
    parsed = parse_message(raw)
    assert len(parsed.to) == 1000
    assert parsed.to[-1] == {"name": "", "address": "u999@example.com"}
    assert parsed.references == [f"r{i}@example.com" for i in range(4900, 5000)]
    parsed = parse_message(raw, Limits(max_addresses=10, max_references=5))
    assert [a["address"] for a in parsed.to] == [f"u{i}@example.com" for i in range(10)]
    assert parsed.references == [f"r{i}@example.com" for i in range(4995, 5000)]


def test_a_short_boundary_inside_lines_is_one_miss_a_line_at_most():
    # boundary="-": every "---" inside a text table's dash lines was a miss
    # of its own (140 KB of them were "more than 100000 lines that look like
    # MIME boundaries"); each line is now one miss at most.
    table = b"".join(b"|%s|\r\n" % b"|".join([b"-" * 60] * 3) for _ in range(760))
    raw = _multipart(
        b"---\r\nContent-Type: text/plain\r\n\r\nA table:\r\n" + table + b"end\r\n"
        b"---\r\nContent-Type: text/plain\r\n\r\nsecond\r\n-----\r\n",
        boundary=b"-",
    )
    assert len(raw) > 140_000
    reference = email.message_from_bytes(raw, policy=compat32)
    assert _tree(mime.mime_tree(raw)) == _tree(reference)
    parsed = parse_message(raw)
    assert parsed.text_body.startswith("A table:\n|---")
    assert parsed.text_body.endswith("end\n\nsecond")


# --- Large plain-text mail within the memory bound (issue 14, section 1) ---------


def _parse_peak_ok(raw: bytes, limits: Limits | None = None):
    """The parsed message and the most memory Python held meanwhile."""
    tracemalloc.start()
    try:
        return parse_message(raw, limits), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


_BIG_HEAD = b"From: a@b.c\r\nSubject: big\r\nMIME-Version: 1.0\r\n"


def test_an_enclosed_message_of_8bit_lines_is_split_fast_and_kept_as_it_came():
    # 49.5 MB: 990,000 lines of 48 x 0xE9 in a message/rfc822. The FeedParser
    # kept a str a line, four bytes a character (~400 MB with its text).
    inner = (
        b"From: c@d.e\r\nSubject: inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n"
        + b"\xe9" * 48
        + b"\r\n"
    ) + (b"\xe9" * 48 + b"\r\n") * 990_000
    raw = _BIG_HEAD + b"Content-Type: message/rfc822\r\n\r\n" + inner
    parsed, peak = _parse_peak_ok(raw)
    assert peak < 1.3 * len(raw)  # the attachment's bytes, once
    assert [(a.mime_type, a.filename) for a in parsed.attachments] == [("message/rfc822", "message.eml")]
    assert parsed.attachments[0].data == inner  # as it came, not regenerated from its tree


def test_text_bodies_are_kept_to_their_first_million_characters():
    # 45 MB of plain text in 9 parts, one 8-bit byte a line: its text was
    # four bytes a character, and all of it was joined and stored.
    part = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + ("ab" * 23 + "\u00e9\r\n").encode() * 100_000
    raw = _multipart(b"".join(b"--b\r\n" + part for _ in range(9)) + b"--b--\r\n")
    parsed, peak = _parse_peak_ok(raw)
    assert len(parsed.text_body) == 1_000_000
    assert parsed.text_body.startswith("ab" * 23 + "\u00e9\n")  # decoded as UTF-8, not cut mid-character
    assert peak < 0.5 * len(raw)
    html = _BIG_HEAD + b"Content-Type: text/html\r\n\r\n" + b"<p>" + b"x" * 3_000_000
    assert len(parse_message(html).html_body) == 1_000_000
    assert len(parse_message(html, Limits(max_body_chars=10)).html_body) == 10


@pytest.mark.parametrize("pad", range(4))
@pytest.mark.parametrize("line", ["Voilà déjà l'été, où ça ?", "\U0001f600\U0001f389 ok"])
def test_a_capped_8bit_body_is_cut_between_characters_and_lines(pad, line):
    # The cap fell inside a character, the UTF-8 decoding failed and the
    # whole body was read as cp1252 ("VoilÃ  dÃ©jÃ "); a CRLF lost its LF.
    text = "x" * pad + (line + "\r\n") * 2000
    raw = b"Subject: long\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode()

    body = parse_message(raw, Limits(max_body_chars=1000)).text_body

    assert body == text.replace("\r\n", "\n")[: len(body)]
    assert 900 <= len(body) <= 1000 and "\r" not in body


def test_the_feedparser_is_given_a_bounded_text():
    # A lone CR sends mail to the FeedParser, fed as one str: four bytes a
    # character once one byte is 8-bit.
    raw = _BIG_HEAD + b"\r\nlone\rCR\r\n" + (b"\xe9" * 1000 + b"\r\n") * 13_000
    with pytest.raises(
        MessageRejected, match=r"^a message of unusual structure over 8388608 bytes with 8-bit"
    ):
        parse_message(raw)
    assert parse_message(raw.replace(b"\xe9", b"e")).subject == "big"
