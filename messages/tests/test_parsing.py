"""The parser on real and malformed mail from the shared corpus."""

import base64
import email
from email.policy import compat32
from email.utils import getaddresses

import pytest

from messages import parsing
from messages.parsing import (
    Limits,
    MessageRejected,
    _split_addresses,
    decode_header_value,
    html_to_text,
    message_ids,
    parse_message,
)
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
    assert message_ids("<yes>") == []  # git send-email --in-reply-to=yes
    long_id = "<" + "é" * 900 + "@x>"
    assert len(message_ids(long_id)[0]) == 250


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
    assert html_to_text("<" * 200_000) == " "
    assert html_to_text("<p>Hi <b>there</b><script>x()</script>!") == " Hi  there  !"


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
    text = raw.decode("ascii", "surrogateescape")
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None
    try:
        return parsing._fast_part(text, 0, len(text), 0)
    except parsing._Unusual:
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
        b"From: a@b.c\nContent-Type: multipart/mixed\n\nno boundary\n",
    ],
)
def test_fast_mime_tree_matches_or_declines_on_odd_structures(raw):
    reference = email.message_from_bytes(raw, policy=compat32)
    tree = _fast_tree(raw)
    if tree is not None:
        assert _tree(tree) == _tree(reference)
    assert _tree(parsing.mime_tree(raw)) == _tree(reference)


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
    assert len(part.get_payload()) > parsing._LARGE_PART
    assert parsing._payload_bytes(part) == part.get_payload(decode=True)
    assert parse_message(raw).attachments[0].data == part.get_payload(decode=True)
