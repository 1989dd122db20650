"""Every message keeps its Message-ID, through a real sync against Dovecot:
stored as the parser normalises it, found by `GET /api/messages/?message_id=`,
threaded with a reply that names it, and a made-up one, flagged, for mail
without any."""

import json
from urllib.parse import quote

import factory
import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from emailclient.core.tenancy import tenant_scope
from mailboxes.sync import account_sync
from mailboxes.tests.conftest import imap
from messages.models import Message
from messages.tests.corpus import CORPUS_DIR
from messages.tests.factories import MessageFactory

LONG = "x" * 300 + "@example.com"
# (the Message-ID header as written, the id stored, how a reply names it)
SHAPES = [
    ("<plain.1@example.com>", "plain.1@example.com", "<plain.1@example.com>"),
    ("<no-at-sign-1234>", "no-at-sign-1234", "<no-at-sign-1234>"),
    ("<spaces inside @ example.com>", "spacesinside@example.com", "<spaces inside@example.com>"),
    ('<"quoted local"@example.com>', '"quotedlocal"@example.com', '<"quoted local"@example.com>'),
    ("bare.1@example.com", "bare.1@example.com", "<bare.1@example.com>"),
    ("<folded-in-mid\r\n id@example.com>", "folded-in-midid@example.com", "<folded-in-midid@example.com>"),
    (
        "<abc.2@host\r\n\tReceived: from mx by host; Mon, 1 Jan 2024 00:00:00 +0000>",
        "abc.2@hostReceived:frommxbyhost;Mon,1Jan202400:00:00+0000",
        "<abc.2@host Received: from mx by host; Mon, 1 Jan 2024 00:00:00 +0000>",
    ),
]
NO_ID = CORPUS_DIR / "mime-parser-cases" / "rfc" / "000.eml"


def mail(headers: str, body: str = "body") -> bytes:
    return f"From: a@example.com\r\nTo: b@example.com\r\n{headers}\r\n\r\n{body}\r\n".encode()


def sync(account):
    return account_sync(tenant_id=account.tenant_id, account_id=account.id)


def by_message_id(client, value: str) -> list[dict]:
    response = client.get(f"/api/messages/?message_id={quote(value)}")
    assert response.status_code == 200, response.content
    return response.json()["results"]


@pytest.mark.django_db
@pytest.mark.parametrize(("written", "stored", "named"), SHAPES, ids=[s for _, s, _ in SHAPES])
def test_an_odd_message_id_is_kept_found_and_threaded(
    imap_account, mailbox, client_a, client_b, written, stored, named
):
    mailbox.append("INBOX", mail(f"Subject: parent\r\nMessage-ID: {written}"))
    mailbox.append("INBOX", mail("Subject: unrelated\r\nMessage-ID: <other@example.com>"))
    mailbox.append(
        "INBOX",
        mail(
            f"Subject: a reply\r\nMessage-ID: <r@example.com>\r\nIn-Reply-To: {named}\r\nReferences: {named}"
        ),
    )
    sync(imap_account)

    with tenant_scope(imap_account.tenant_id):
        parent = Message.objects.get(subject="parent")
        reply = Message.objects.get(subject="a reply")
        unrelated = Message.objects.get(subject="unrelated")
    assert parent.message_id == stored
    assert not parent.message_id_synthetic
    assert reply.in_reply_to == stored
    assert reply.references == [stored]
    assert reply.thread_id == parent.thread_id != unrelated.thread_id

    for query in (stored, f"<{stored}>", named):
        found = by_message_id(client_a, query)
        assert [m["id"] for m in found] == [str(parent.id)], query
        assert found[0]["message_id"] == stored
        assert found[0]["message_id_synthetic"] is False
        assert by_message_id(client_b, query) == []


@pytest.mark.django_db
def test_an_over_long_message_id_is_cut_the_same_way_for_the_message_and_its_reply(
    imap_account, mailbox, client_a
):
    mailbox.append("INBOX", mail(f"Subject: parent\r\nMessage-ID: <{LONG}>"))
    mailbox.append("INBOX", mail(f"Subject: a reply\r\nIn-Reply-To: <{LONG}>\r\nReferences: <{LONG}>"))
    sync(imap_account)
    with tenant_scope(imap_account.tenant_id):
        parent = Message.objects.get(subject="parent")
        reply = Message.objects.get(subject="a reply")
    assert len(parent.message_id) == 250
    assert parent.message_id.startswith(LONG[:185] + "~")
    assert reply.references == [parent.message_id]
    assert reply.thread_id == parent.thread_id
    assert [m["id"] for m in by_message_id(client_a, f"<{LONG}>")] == [str(parent.id)]


@pytest.mark.django_db
def test_a_message_without_message_id_gets_a_stable_synthetic_one(
    imap_account, mailbox, devmail, mail_user, client_a, client_b
):
    raw = NO_ID.read_bytes()
    assert b"message-id" not in raw.lower()
    mailbox.append("INBOX", raw)
    mailbox.append("INBOX", mail("Subject: hand-made, no id"))
    mailbox.create_folder("Archive")
    mailbox.append("Archive", raw)
    sync(imap_account)

    with tenant_scope(imap_account.tenant_id):
        rows = {
            (m.folder.name, m.subject): m
            for m in Message.objects.filter(account=imap_account).select_related("folder")
        }
    assert len(rows) == 3
    assert all(m.message_id_synthetic for m in rows.values())
    assert all(m.message_id.endswith("@synthetic.invalid") for m in rows.values())
    corpus_rows = [m for (_, subject), m in rows.items() if subject != "hand-made, no id"]
    assert len({m.message_id for m in corpus_rows}) == 1, "the same bytes, the same id, in any folder"
    hand_made = next(m for (_, subject), m in rows.items() if subject == "hand-made, no id")
    assert hand_made.message_id != corpus_rows[0].message_id
    before = {m.id: m.message_id for m in rows.values()}

    found = by_message_id(client_a, hand_made.message_id)
    assert [m["id"] for m in found] == [str(hand_made.id)]
    assert found[0]["message_id_synthetic"] is True
    detail = client_a.get(f"/api/messages/{hand_made.id}/").json()
    assert detail["message_id_synthetic"] is True
    assert detail["message_id"] == hand_made.message_id
    assert by_message_id(client_b, hand_made.message_id) == []

    # A UIDVALIDITY change: the same rows, the same ids.
    mailbox.logout()
    devmail.stop()
    devmail.reset_uidvalidity(mail_user, "INBOX")
    devmail.start()
    report = sync(imap_account)
    assert report.new == 2  # both re-matched, none added
    with tenant_scope(imap_account.tenant_id):
        after = dict(Message.objects.filter(account=imap_account).values_list("id", "message_id"))
    assert after == before
    client = imap(devmail, mail_user)
    client.logout()


@pytest.mark.django_db
def test_git_send_email_yes_is_no_reference(imap_account, mailbox):
    """`In-Reply-To: <yes>` (a git send-email bug) must not chain the
    unrelated patches that carry it into one thread."""
    for n in range(2):
        mailbox.append(
            "INBOX",
            mail(f"Subject: [PATCH {n}] x\r\nMessage-ID: <patch{n}@example.com>\r\nIn-Reply-To: <yes>"),
        )
    sync(imap_account)
    with tenant_scope(imap_account.tenant_id):
        threads = set(Message.objects.values_list("thread_id", flat=True))
        assert Message.objects.filter(in_reply_to="").count() == 2
    assert len(threads) == 2


@pytest.mark.usefixtures("committed_db")
def test_the_message_id_filter_reads_its_index_under_row_level_security(imap_account, mailbox, client_a):
    """Plain equality on a varchar is LEAKPROOF, so the policy does not keep
    PostgreSQL from the (message_id, account) index."""
    mailbox.append("INBOX", mail("Subject: wanted\r\nMessage-ID: <wanted@example.com>"))
    sync(imap_account)
    with tenant_scope(imap_account.tenant_id):
        inbox = Message.objects.get(subject="wanted").folder
        MessageFactory.create_batch(2_000, folder=inbox, imap_uid=factory.Iterator(range(1_000, 3_000)))
    with connections["owner"].cursor() as cursor:  # statistics, as a live table has them
        cursor.execute("ANALYZE email_messages")
    with CaptureQueriesContext(connection) as queries:
        assert len(by_message_id(client_a, "<wanted@example.com>")) == 1
    page = [q["sql"] for q in queries.captured_queries if 'FROM "email_messages"' in q["sql"]]
    assert len(page) == 1
    with connection.cursor() as cursor, tenant_scope(imap_account.tenant_id):
        cursor.execute(f"EXPLAIN (FORMAT JSON) {page[0]}")
        plan = json.dumps(cursor.fetchone()[0])
    assert '"Index Name": "idx_messages_message_id"' in plan, plan[:3000]
