"""Replies and forwards built from stored messages (compose.replies), and
replies to the shared corpus built into MIME and read back."""

import datetime

import pytest

from compose.mime import OutgoingMessage, message_build, message_needs_smtputf8
from compose.replies import (
    FORWARD_SEPARATOR,
    MAX_QUOTED_HTML_CHARS,
    MAX_REFERENCES,
    forward_build,
    forward_subject,
    references_trim,
    reply_build,
    reply_subject,
)
from emailclient.core.tenancy import tenant_scope
from messages.models import Message
from messages.parsing import MessageRejected, parse_message
from messages.tests.corpus import CORPUS_DIR, corpus_files
from messages.tests.factories import MessageFactory

DATE = datetime.datetime(2026, 12, 3, 14, 30, 5, tzinfo=datetime.UTC)
OWN = {"me@example.com", "Me.Too@Example.com"}


def original(**fields):
    """An unsaved Message as the sync stores one."""
    values = {
        "message_id": "orig-1@mail.example.org",
        "references": [],
        "in_reply_to": "",
        "from_name": "Sam Sender",
        "from_address": "sam@example.org",
        "to": [{"name": "Me", "address": "me@example.com"}],
        "cc": [],
        "reply_to": [],
        "subject": "Plans",
        "text_body": "Hello,\n\n> earlier\nBye\n",
        "html_body": "",
        "sent_at": DATE,
        "received_at": DATE + datetime.timedelta(minutes=1),
    }
    values.update(fields)
    return Message(**values)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Plans", "Re: Plans"),
        ("Re: Plans", "Re: Plans"),
        ("Re: Re: RE: Plans", "Re: Plans"),
        ("re:Plans", "Re: Plans"),
        ("Re[2]: Plans", "Re: Plans"),
        ("Re (3) : Plans", "Re: Plans"),
        ("AW: Sv: Antw: Plans", "Re: Plans"),
        ("Re\uff1a Plans", "Re: Plans"),
        ("Fwd: Plans", "Re: Fwd: Plans"),
        ("Re: Fwd: Plans", "Re: Fwd: Plans"),
        ("Fwd: Re: Plans", "Re: Fwd: Re: Plans"),
        ("Regarding: Plans", "Re: Regarding: Plans"),
        ("Re:", "Re:"),
        ("", "Re:"),
        ("  Plans\r\n with\tbreaks ", "Re: Plans with breaks"),
        ("Ünïcode ✓", "Re: Ünïcode ✓"),
    ],
)
def test_reply_subject(subject, expected):
    assert reply_subject(subject) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Plans", "Fwd: Plans"),
        ("Fwd: Plans", "Fwd: Plans"),
        ("FW: Fwd: WG: Plans", "Fwd: Plans"),
        ("Re: Plans", "Fwd: Re: Plans"),
        ("", "Fwd:"),
    ],
)
def test_forward_subject(subject, expected):
    assert forward_subject(subject) == expected


def test_reply_goes_to_the_sender_with_threading_headers_and_quotes():
    built = reply_build(original=original(), own_addresses=OWN, reply_all=False)
    assert built.to == [{"name": "Sam Sender", "address": "sam@example.org"}]
    assert built.cc == []
    assert built.subject == "Re: Plans"
    assert built.in_reply_to_header == "<orig-1@mail.example.org>"
    assert built.references_header == "<orig-1@mail.example.org>"
    assert built.quoted_text == (
        "\n\nOn Thu, 03 Dec 2026 14:30:05 +0000, Sam Sender <sam@example.org> wrote:\n"
        "> Hello,\n"
        ">\n"
        ">> earlier\n"
        "> Bye\n"
    )
    assert built.quoted_html == (
        "<p><br></p>\n"
        "<p>On Thu, 03 Dec 2026 14:30:05 +0000, Sam Sender &lt;sam@example.org&gt; wrote:</p>\n"
        "<blockquote>\n"
        "<div>Hello,<br>\n<br>\n&gt; earlier<br>\nBye</div>\n"
        "</blockquote>\n"
    )


def test_reply_to_header_wins_over_from():
    built = reply_build(
        original=original(reply_to=[{"name": "List", "address": "list@lists.example.org"}]),
        own_addresses=OWN,
        reply_all=False,
    )
    assert built.to == [{"name": "List", "address": "list@lists.example.org"}]


def test_reply_all_adds_to_and_cc_without_own_addresses_or_duplicates():
    message = original(
        to=[
            {"name": "Me", "address": "ME@example.com"},
            {"name": "Ann", "address": "ann@example.org"},
            {"name": "Sam again", "address": "SAM@example.org"},
        ],
        cc=[
            {"name": "Me too", "address": "me.too@example.com"},
            {"name": "Bob", "address": "bob@bücher.example"},
            {"name": "Ann twice", "address": "Ann@Example.org"},
            {"name": "", "address": "not an address"},
            {"name": "Broken\x01name", "address": "carol@example.org"},
        ],
    )
    built = reply_build(original=message, own_addresses=OWN, reply_all=True)
    assert built.to == [{"name": "Sam Sender", "address": "sam@example.org"}]
    assert built.cc == [
        {"name": "Ann", "address": "ann@example.org"},
        {"name": "Bob", "address": "bob@xn--bcher-kva.example"},
        {"name": "", "address": "carol@example.org"},
    ]
    not_all = reply_build(original=message, own_addresses=OWN, reply_all=False)
    assert not_all.cc == []


def test_own_addresses_compare_after_idna():
    message = original(to=[{"name": "", "address": "me@xn--bcher-kva.example"}], cc=[])
    built = reply_build(original=message, own_addresses={"ME@bücher.example"}, reply_all=True)
    assert built.cc == []


def test_reply_to_own_sent_message_goes_to_its_recipients():
    message = original(
        from_name="Me",
        from_address="me@example.com",
        to=[{"name": "Ann", "address": "ann@example.org"}, {"name": "Me", "address": "me@example.com"}],
        cc=[{"name": "Bob", "address": "bob@example.org"}],
    )
    built = reply_build(original=message, own_addresses=OWN, reply_all=True)
    assert built.to == [{"name": "Ann", "address": "ann@example.org"}]
    assert built.cc == [{"name": "Bob", "address": "bob@example.org"}]


def test_note_to_self_replies_to_self():
    message = original(
        from_name="Me", from_address="me@example.com", to=[{"name": "", "address": "me@example.com"}]
    )
    built = reply_build(original=message, own_addresses=OWN, reply_all=True)
    assert built.to == [{"name": "", "address": "me@example.com"}]
    assert built.cc == []


def test_references_chain_and_fallback_to_in_reply_to():
    chained = reply_build(
        original=original(references=["root@x", "mid@x"], in_reply_to="mid@x"),
        own_addresses=OWN,
        reply_all=False,
    )
    assert chained.references_header == "<root@x> <mid@x> <orig-1@mail.example.org>"
    fallback = reply_build(original=original(in_reply_to="parent@x"), own_addresses=OWN, reply_all=False)
    assert fallback.references_header == "<parent@x> <orig-1@mail.example.org>"


def test_references_are_trimmed_keeping_the_root_and_the_newest():
    ids = [f"id{i}@x" for i in range(50)]
    built = reply_build(original=original(references=ids), own_addresses=OWN, reply_all=False)
    written = [i.strip("<>") for i in built.references_header.split()]
    assert written == ["id0@x", *[f"id{i}@x" for i in range(32, 50)], "orig-1@mail.example.org"]
    assert len(written) == MAX_REFERENCES
    long_ids = [f"{i}-{'x' * 900}@x" for i in range(10)]
    trimmed = references_trim(long_ids)
    assert trimmed == [long_ids[0], *long_ids[-3:]]
    assert references_trim(["a@x"]) == ["a@x"]


def test_synthetic_and_unwritable_ids_are_never_used():
    built = reply_build(
        original=original(
            message_id="sha256-abc@synthetic.invalid",
            message_id_synthetic=True,
            references=["root@x", "ünïcode@x", "bad<id>@x"],
        ),
        own_addresses=OWN,
        reply_all=False,
    )
    assert built.in_reply_to_header == ""
    assert built.references_header == "<root@x>"
    forward = forward_build(
        original=original(message_id="sha256-abc@synthetic.invalid", message_id_synthetic=True)
    )
    assert forward.references_header == ""


ODD_IDS = [
    '"quoted"@x.example',
    "a(comment)@x.example",
    "back\\slash@x.example",
    "a,b@x.example",
    "with space@x.example",
    "no-at-sign",
    "@x.example",
    "left@",
    "a..b@x.example",
    ".a@x.example",
    "a@x.example.",
    "two@at@x.example",
    "a@[bad\\literal]",
    "a@[nested[]",
]


@pytest.mark.parametrize("odd", ODD_IDS)
def test_ids_that_are_not_rfc_5322_msg_ids_are_dropped(odd):
    built = reply_build(
        original=original(message_id=odd, references=["root@x.example", odd, "a@[192.0.2.1]"]),
        own_addresses=OWN,
        reply_all=False,
    )

    assert built.in_reply_to_header == ""
    assert built.references_header == "<root@x.example> <a@[192.0.2.1]>"
    assert forward_build(original=original(message_id=odd)).references_header == ""


def test_valid_msg_ids_with_every_atext_character_are_kept():
    odd_but_valid = "a!#$%&'*+/=?^_`{|}~-1.b@x-y.example"
    built = reply_build(original=original(message_id=odd_but_valid), own_addresses=OWN, reply_all=False)
    assert built.in_reply_to_header == f"<{odd_but_valid}>"


def test_quoted_html_is_sanitised():
    message = original(
        text_body="",
        html_body='<p onclick="x()">Hi <script>alert(1)</script><img src="https://track.example/p.gif"></p>',
    )
    built = reply_build(original=message, own_addresses=OWN, reply_all=False)
    assert built.quoted_html == (
        "<p><br></p>\n"
        "<p>On Thu, 03 Dec 2026 14:30:05 +0000, Sam Sender &lt;sam@example.org&gt; wrote:</p>\n"
        "<blockquote>\n<p>Hi <img></p>\n</blockquote>\n"
    )
    # HTML-only mail is quoted as its text.
    assert built.quoted_text.endswith("wrote:\n> Hi\n")


def test_hostile_original_fields_make_safe_reply_fields():
    message = original(
        subject="Evil\r\nBcc: victim@z.org",
        from_name="Evil\r\nBcc: victim@z.org",
        from_address="evil@example.org",
        text_body="</div><script>alert(1)</script>",
    )
    built = reply_build(original=message, own_addresses=OWN, reply_all=False)
    assert built.subject == "Re: Evil Bcc: victim@z.org"
    assert built.to == [{"name": "", "address": "evil@example.org"}]
    assert "<script>" not in built.quoted_html
    assert "&lt;script&gt;" in built.quoted_html


def test_long_bodies_are_cut():
    built = reply_build(original=original(text_body="x" * 600_000), own_addresses=OWN, reply_all=False)
    assert built.quoted_text.endswith("\n> [... the rest of the message is not quoted ...]\n")
    assert len(built.quoted_text) < 501_000


def test_a_long_html_only_original_is_cut_before_it_is_converted(monkeypatch):
    from compose import replies

    seen = []
    monkeypatch.setattr(replies, "text_from_html", lambda html: seen.append(len(html)) or "text " * 10)
    html = '<a href="http://x">x' * 60_000  # 1.2 MB of links never closed

    built = reply_build(original=original(text_body="", html_body=html), own_addresses=OWN, reply_all=False)

    assert seen == [MAX_QUOTED_HTML_CHARS]
    assert built.quoted_text.endswith("\n> [... the rest of the message is not quoted ...]\n")


def test_forward_build():
    message = original(
        to=[{"name": "Doe, John", "address": "j@x.org"}],
        cc=[{"name": "", "address": "c@x.org"}],
        html_body="<p>Hello <b>there</b></p>",
        text_body="Hello there\n",
    )
    built = forward_build(original=message)
    assert built.to == []
    assert built.cc == []
    assert built.subject == "Fwd: Plans"
    assert built.in_reply_to_header == ""
    assert built.references_header == "<orig-1@mail.example.org>"
    assert built.quoted_text == (
        f"\n\n{FORWARD_SEPARATOR}\n"
        "From: Sam Sender <sam@example.org>\n"
        "Date: Thu, 03 Dec 2026 14:30:05 +0000\n"
        "Subject: Plans\n"
        "To: Doe, John <j@x.org>\n"
        "Cc: c@x.org\n"
        "\n"
        "Hello there\n"
    )
    assert built.quoted_html == (
        f"<p><br></p>\n<div>{FORWARD_SEPARATOR}<br>\n"
        "From: Sam Sender &lt;sam@example.org&gt;<br>\n"
        "Date: Thu, 03 Dec 2026 14:30:05 +0000<br>\n"
        "Subject: Plans<br>\n"
        "To: Doe, John &lt;j@x.org&gt;<br>\n"
        "Cc: c@x.org</div>\n"
        "<br>\n"
        "<p>Hello <b>there</b></p>\n"
    )


@pytest.mark.django_db
def test_reply_from_a_stored_message(tenant_a, account_a):
    stored = MessageFactory(
        tenant=tenant_a,
        folder__account=account_a,
        message_id="stored@example.com",
        references=["root@example.com"],
        subject="Re: Stored",
    )
    with tenant_scope(tenant_a.id):
        stored = Message.objects.get(id=stored.id)  # as the API reads it: JSON and arrays from the database
    built = reply_build(original=stored, own_addresses={"reader@example.com"}, reply_all=True)
    assert built.to == [{"name": "Sam Sender", "address": "sender@example.com"}]
    assert built.cc == []  # the only other recipient is our own address
    assert built.subject == "Re: Stored"
    assert built.in_reply_to_header == "<stored@example.com>"
    assert built.references_header == "<root@example.com> <stored@example.com>"


# --- Replies to real mail -------------------------------------------------------------


def _stored(raw: bytes) -> Message | None:
    try:
        parsed = parse_message(raw)
    except MessageRejected:
        return None
    return Message(
        message_id=parsed.message_id,
        message_id_synthetic=parsed.message_id_synthetic,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        from_name=parsed.from_name,
        from_address=parsed.from_address,
        to=parsed.to,
        cc=parsed.cc,
        reply_to=parsed.reply_to,
        subject=parsed.subject,
        text_body=parsed.text_body,
        html_body=parsed.html_body,
        sent_at=parsed.sent_at,
        received_at=DATE,
    )


CORPUS = corpus_files()


def test_the_corpus_is_there():
    assert CORPUS_DIR.is_dir() and len(CORPUS) > 400


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(CORPUS_DIR)))
def test_replies_and_forwards_of_corpus_mail_build_and_parse_back(path):
    stored = _stored(path.read_bytes())
    if stored is None:
        return  # not mail: the sync quarantines it, nobody replies to it
    for reply_all in (False, True):
        built = reply_build(original=stored, own_addresses=OWN, reply_all=reply_all)
        _check_built(stored, built, reply=True)
    _check_built(stored, forward_build(original=stored), reply=False)


def _check_built(stored, built, *, reply):
    outgoing = OutgoingMessage(
        sender={"name": "Me", "address": "me@example.com"},
        to=built.to or [{"name": "", "address": "someone@example.org"}],
        cc=built.cc,
        bcc=[],
        reply_to=[],
        subject=built.subject,
        text_body="My answer.\n" + built.quoted_text,
        html_body="<p>My answer.</p>" + built.quoted_html,
        message_id="<0123456789abcdef0123456789abcdef@example.com>",
        date=DATE,
        in_reply_to=built.in_reply_to_header,
        references=built.references_header,
    )
    raw = message_build(outgoing, smtputf8=message_needs_smtputf8(outgoing))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    parsed = parse_message(raw)
    assert parsed.subject == built.subject
    assert parsed.to == outgoing.to
    assert parsed.cc == outgoing.cc
    assert parsed.text_body == outgoing.text_body.replace("\r\n", "\n")
    own_id = "" if stored.message_id_synthetic else stored.message_id
    if reply:
        assert parsed.in_reply_to == built.in_reply_to_header.strip("<>")
        if own_id and built.in_reply_to_header:
            assert parsed.in_reply_to == own_id
            assert parsed.references[-1] == own_id
    else:
        assert parsed.in_reply_to == ""
    assert parsed.references == [i.strip("<>") for i in built.references_header.split()]
