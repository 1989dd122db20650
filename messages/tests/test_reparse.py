"""`manage.py reparse`: stored messages brought up to date from their raw sources.

Messages are stored as the parser before lenient Message-IDs left them (an id
without `@` dropped, no synthetic id, no text body for HTML-only mail), with
their threads as that sync made them (`assign_threads` on the old values) and
their raw sources in a real blob store.
"""

import re
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.tenancy import tenant_scope
from messages.indexing import search_index_pending
from messages.models import Message, ThreadRef
from messages.parsing import parse_message, synthetic_message_id
from messages.reparse import messages_reparse
from messages.tests.corpus import CORPUS_DIR
from messages.tests.factories import FolderFactory
from messages.threads import assign_threads

PARENT = b"""\
From: Olga Odd <olga@example.com>
To: reader@example.com
Subject: Hello
Message-ID: <odd-id-without-at-sign>
Date: Mon, 01 Jan 2024 10:00:00 +0000

The parent, whose id the old parser dropped.
"""

SIBLING = b"""\
From: Sam Sibling <sam@example.com>
To: reader@example.com
Subject: Re: Hello
Message-ID: <sibling@example.com>
Date: Mon, 01 Jan 2024 11:00:00 +0000

A reply without In-Reply-To: joined the parent by its subject.
"""

REPLY = b"""\
From: Rita Reader <reader@example.com>
To: olga@example.com
Subject: Re: Hello
Message-ID: <reply@example.com>
In-Reply-To: <odd-id-without-at-sign>
References: <odd-id-without-at-sign>
Date: Mon, 01 Jan 2024 12:00:00 +0000

The reply, naming the parent by its odd id.
"""

PLAIN = b"""\
From: Nora Normal <nora@example.com>
To: reader@example.com
Subject: Nothing odd
Message-ID: <plain@example.com>
Date: Mon, 01 Jan 2024 09:00:00 +0000

Nothing to change here.
"""

HTML_ONLY = (CORPUS_DIR / "notmuch" / "html" / "attribute-text").read_bytes()  # body text: "hunter2"
NO_MESSAGE_ID = (CORPUS_DIR / "mime-parser-cases" / "rfc" / "000.eml").read_bytes()

REPORT = re.compile(
    r"^(?P<tenant>[\w-]+): (?P<examined>\d+) examined, (?P<changed>\d+) (?:changed|would change) .*?"
    r"(?P<missing>\d+) missing source, (?P<unparseable>\d+) unparseable",
    re.MULTILINE,
)


@pytest.fixture
def inbox_b(tenant_b, user_b):
    return FolderFactory(
        account=EmailAccountFactory(tenant=tenant_b, user=user_b), name="INBOX", type="inbox"
    )


def old_sync(blobs, folder, *items: tuple[bytes, dict]) -> list[Message]:
    """Store messages in one batch as the old sync did: the parser's values,
    with `old` (what the old parser made of the ids and text; any other
    column too) in place of the new parser's, threaded by `assign_threads`
    on those."""
    tenant_id = folder.tenant_id
    messages = []
    for raw, old in items:
        key = blobs.put(tenant_id, raw)
        parsed = parse_message(raw)
        values = {
            "message_id": parsed.message_id,
            "message_id_synthetic": parsed.message_id_synthetic,
            "in_reply_to": parsed.in_reply_to,
            "references": parsed.references,
            "text_body": parsed.text_body,
            "snippet": parsed.snippet,
            **old,
        }
        messages.append(
            Message(
                tenant_id=tenant_id,
                account_id=folder.account_id,
                folder=folder,
                uidvalidity=folder.uidvalidity,
                subject=parsed.subject,
                from_name=parsed.from_name,
                from_address=parsed.from_address,
                to=parsed.to,
                html_body=parsed.html_body,
                sent_at=parsed.sent_at,
                received_at=parsed.sent_at,
                size_bytes=len(raw),
                content_hash=key,
                raw_blob_key=key,
                **values,
            )
        )
    with tenant_scope(tenant_id):
        start = Message.objects.filter(folder=folder).count()
        for uid, message in enumerate(messages, start=start + 1):
            message.imap_uid = uid
        assign_threads(tenant_id=tenant_id, account_id=folder.account_id, messages=messages)
        Message.objects.bulk_create(messages)
    return messages


# What the old parser made of each: the odd ids dropped, no synthetic id, no text.
OLD_PARENT = {"message_id": ""}
OLD_REPLY = {"in_reply_to": "", "references": []}
OLD_HTML_ONLY = {"text_body": "", "snippet": ""}
OLD_NO_MESSAGE_ID = {"message_id": "", "message_id_synthetic": False}


def snapshot(tenant_id) -> dict:
    with tenant_scope(tenant_id):
        rows = {
            str(row["id"]): row
            for row in Message.objects.filter(tenant_id=tenant_id).values(
                "id",
                "message_id",
                "message_id_synthetic",
                "in_reply_to",
                "references",
                "text_body",
                "snippet",
                "thread_id",
                "is_read",
                "is_flagged",
                "folder_id",
                "subject",
                "html_body",
                "updated_at",
            )
        }
        refs = set(ThreadRef.objects.filter(tenant_id=tenant_id).values_list("message_id", "thread_id"))
    return {"messages": rows, "refs": refs}


def fresh(message: Message) -> Message:
    with tenant_scope(message.tenant_id):
        return Message.objects.get(id=message.id)


def reparse(*args) -> dict[str, dict[str, int]]:
    out = StringIO()
    call_command("reparse", *args, stdout=out)
    return {
        m["tenant"]: {k: int(v) for k, v in m.groupdict().items() if k != "tenant"}
        for m in REPORT.finditer(out.getvalue())
    }


@pytest.fixture
def stored(blobs, inbox_a):
    """The old sync's state of tenant A's mailbox."""
    # The reply came first (else the old sync would have put it with the
    # parent by its subject); the sibling after the parent, joining it by subject.
    (reply,) = old_sync(blobs, inbox_a, (REPLY, OLD_REPLY))
    (parent,) = old_sync(blobs, inbox_a, (PARENT, OLD_PARENT))
    (sibling,) = old_sync(blobs, inbox_a, (SIBLING, {}))
    plain, html_only, no_id = old_sync(
        blobs, inbox_a, (PLAIN, {}), (HTML_ONLY, OLD_HTML_ONLY), (NO_MESSAGE_ID, OLD_NO_MESSAGE_ID)
    )
    with tenant_scope(inbox_a.tenant_id):
        Message.objects.filter(id=parent.id).update(is_read=True, is_flagged=True)
        Message.objects.filter(id=reply.id).update(is_read=False, is_flagged=True)
    search_index_pending(tenant_id=inbox_a.tenant_id)  # the old text indexed
    return {
        "parent": fresh(parent),
        "sibling": fresh(sibling),
        "reply": fresh(reply),
        "plain": fresh(plain),
        "html_only": fresh(html_only),
        "no_id": fresh(no_id),
    }


@pytest.mark.django_db
def test_the_old_state_is_as_the_old_parser_left_it(stored):
    # The premises of the tests below: the reply sits in a thread of its own.
    assert stored["parent"].message_id == ""
    assert stored["parent"].thread_id == stored["sibling"].thread_id
    assert stored["reply"].thread_id != stored["parent"].thread_id
    assert stored["html_only"].text_body == ""


@pytest.mark.django_db
@pytest.mark.parametrize("batch_size", [1, 2, 500])
def test_reparse_updates_ids_text_and_threads(stored, tenant_a, batch_size):
    before = snapshot(tenant_a.id)

    counts = reparse("--tenant", "tenant-a", "--batch-size", str(batch_size))

    assert counts == {"tenant-a": {"examined": 6, "changed": 4, "missing": 0, "unparseable": 0}}
    parent, sibling, reply = fresh(stored["parent"]), fresh(stored["sibling"]), fresh(stored["reply"])
    assert parent.message_id == "odd-id-without-at-sign"
    assert parent.message_id_synthetic is False
    assert reply.in_reply_to == "odd-id-without-at-sign"
    assert reply.references == ["odd-id-without-at-sign"]
    # The reply joins its parent, and the parent keeps the message its subject joined.
    assert parent.thread_id == reply.thread_id == sibling.thread_id
    assert parent.thread_id in {stored["parent"].thread_id, stored["reply"].thread_id}
    with tenant_scope(tenant_a.id):
        assert ThreadRef.objects.get(message_id="odd-id-without-at-sign").thread_id == parent.thread_id
    no_id = fresh(stored["no_id"])
    assert no_id.message_id == synthetic_message_id(NO_MESSAGE_ID)
    assert no_id.message_id_synthetic is True
    assert no_id.thread_id == stored["no_id"].thread_id  # a new id, its thread kept
    html_only = fresh(stored["html_only"])
    assert html_only.text_body == "hunter2"
    assert html_only.snippet == "hunter2"
    # Nothing else moved: state, folder, other fields, the unchanged message's thread.
    after = snapshot(tenant_a.id)
    for key, row in after["messages"].items():
        old = before["messages"][key]
        for name in ("is_read", "is_flagged", "folder_id", "subject", "html_body"):
            assert row[name] == old[name], name
    assert after["messages"][str(stored["plain"].id)] == before["messages"][str(stored["plain"].id)]
    assert after["messages"][str(stored["html_only"].id)]["thread_id"] == stored["html_only"].thread_id


@pytest.mark.django_db
def test_a_second_run_changes_nothing(stored, tenant_a):
    reparse("--tenant", "tenant-a")
    before = snapshot(tenant_a.id)

    counts = reparse("--tenant", "tenant-a", "--batch-size", "2")

    assert counts["tenant-a"]["changed"] == 0
    assert snapshot(tenant_a.id) == before


@pytest.mark.django_db
def test_dry_run_counts_and_changes_nothing(stored, tenant_a):
    before = snapshot(tenant_a.id)

    out = StringIO()
    call_command("reparse", "--tenant", "tenant-a", "--dry-run", stdout=out)

    assert "4 would change" in out.getvalue()
    assert snapshot(tenant_a.id) == before


@pytest.mark.django_db
def test_html_only_mail_is_found_by_its_words_after_reparse(stored, client_a):
    def found() -> list[str]:
        response = client_a.get("/api/messages/", {"q": "hunter2"})
        assert response.status_code == 200
        return [m["id"] for m in response.json()["results"]]

    assert found() == []  # indexed with the old, empty text

    reparse("--tenant", "tenant-a")

    assert found() == [str(stored["html_only"].id)]
    with tenant_scope(stored["html_only"].tenant_id):
        assert not Message.objects.filter(search_vector__isnull=True).exists()  # all indexed


@pytest.mark.django_db
def test_only_the_named_tenant_changes(stored, blobs, inbox_b, tenant_b):
    (other,) = old_sync(blobs, inbox_b, (PARENT, OLD_PARENT))
    before_b = snapshot(tenant_b.id)

    counts = reparse("--tenant", "tenant-a")

    assert set(counts) == {"tenant-a"}
    assert snapshot(tenant_b.id) == before_b
    assert fresh(other).message_id == ""

    counts = reparse()  # every tenant

    assert counts["tenant-b"] == {"examined": 1, "changed": 1, "missing": 0, "unparseable": 0}
    assert fresh(other).message_id == "odd-id-without-at-sign"


@pytest.mark.django_db
def test_only_the_named_account_changes(stored, blobs, tenant_a, user_a):
    other_inbox = FolderFactory(account=EmailAccountFactory(tenant=tenant_a, user=user_a), name="INBOX")
    (other,) = old_sync(blobs, other_inbox, (PARENT, OLD_PARENT))

    report = messages_reparse(tenant=tenant_a, account_id=other_inbox.account_id)

    assert (report.examined, report.changed) == (1, 1)
    assert fresh(other).message_id == "odd-id-without-at-sign"
    assert fresh(stored["parent"]).message_id == ""


@pytest.mark.django_db
def test_missing_unreadable_and_unparseable_sources_are_counted_and_skipped(stored, blobs, tenant_a, inbox_a):
    other_reply = REPLY.replace(b"<reply@", b"<other-reply@")  # a blob of its own
    missing, unreadable, not_mail = old_sync(
        blobs, inbox_a, (PARENT, OLD_PARENT), (other_reply, OLD_REPLY), (PARENT, OLD_PARENT)
    )
    not_mail_key = blobs.put(tenant_a.id, b"\x00\x01 not mail\n")
    with tenant_scope(tenant_a.id):
        Message.objects.filter(id=missing.id).update(raw_blob_key="f" * 64)
        Message.objects.filter(id=not_mail.id).update(raw_blob_key=not_mail_key)
    blobs.path(tenant_a.id, unreadable.raw_blob_key).write_bytes(b"not gzip")
    before = snapshot(tenant_a.id)["messages"]

    counts = reparse("--tenant", "tenant-a", "--batch-size", "2")

    assert counts["tenant-a"] == {"examined": 9, "changed": 4, "missing": 2, "unparseable": 1}
    after = snapshot(tenant_a.id)["messages"]
    for message in (missing, unreadable, not_mail):
        # Their threads may merge with others (by subject they joined the
        # parent's): the rest of the row is as it was.
        del after[str(message.id)]["thread_id"], before[str(message.id)]["thread_id"]
        assert after[str(message.id)] == before[str(message.id)]
    assert fresh(stored["parent"]).message_id == "odd-id-without-at-sign"  # the run went on


@pytest.mark.django_db
def test_deleted_messages_are_left_alone(stored, tenant_a):
    with tenant_scope(tenant_a.id):
        Message.objects.filter(id=stored["parent"].id).update(is_deleted=True)

    counts = reparse("--tenant", "tenant-a")

    assert counts["tenant-a"]["examined"] == 5
    assert fresh(stored["parent"]).message_id == ""


@pytest.mark.django_db(databases=["default", "admin"])
def test_an_account_that_is_syncing_keeps_its_threads_for_a_later_run(stored, tenant_a):
    """The threading step takes the account's sync lock, as the sync does; a
    sync holding it (here: another session) leaves those messages as they are."""
    key = int.from_bytes(stored["parent"].account_id.bytes[:8], "big", signed=True)
    other_session = connections["admin"]
    with other_session.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        report = messages_reparse(tenant=tenant_a, lock_wait=0)
    finally:
        with other_session.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])

    assert (report.changed, report.busy) == (1, 3)  # the HTML-only text only
    assert fresh(stored["parent"]).message_id == ""
    assert fresh(stored["html_only"]).text_body == "hunter2"

    report = messages_reparse(tenant=tenant_a, lock_wait=0)

    assert (report.changed, report.busy) == (3, 0)
    assert fresh(stored["parent"]).thread_id == fresh(stored["reply"]).thread_id


@pytest.mark.django_db
@pytest.mark.parametrize("reply_first", [True, False])
def test_reply_and_parent_meet_in_either_order(blobs, inbox_a, tenant_a, reply_first):
    """Whichever the walk (by id) reaches first, in batches of one, the
    reply, its parent and the parent's thread end in one thread."""
    low, high = uuid.UUID(int=1), uuid.UUID(int=2**128 - 1)
    (reply,) = old_sync(blobs, inbox_a, (REPLY, {**OLD_REPLY, "id": low if reply_first else high}))
    (parent,) = old_sync(blobs, inbox_a, (PARENT, {**OLD_PARENT, "id": high if reply_first else low}))
    (sibling,) = old_sync(blobs, inbox_a, (SIBLING, {}))
    assert fresh(reply).thread_id != fresh(parent).thread_id

    messages_reparse(tenant=tenant_a, account_id=inbox_a.account_id, batch_size=1)

    assert fresh(parent).thread_id == fresh(reply).thread_id == fresh(sibling).thread_id


@pytest.mark.django_db(databases=["default", "admin"])
def test_unknown_tenant_or_account_is_an_error(stored):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No tenant"):
        call_command("reparse", "--tenant", "nobody", stdout=StringIO())
    with pytest.raises(CommandError, match="No account"):
        call_command("reparse", "--account", str(uuid.uuid4()), stdout=StringIO())


@pytest.mark.django_db
def test_reparse_leaves_the_subject_fallback_where_the_sync_left_it(blobs, inbox_a, tenant_a):
    """A "Re:" without references joins the latest thread of its subject; an
    old message given a new id by the reparse must not become that thread."""
    weekly = (
        b"From: a@example.com\nSubject: Weekly report\nDate: Mon, 01 Jan 2024 10:00:00 +0000\n\nOld week.\n"
    )
    (old_week,) = old_sync(blobs, inbox_a, (weekly, OLD_NO_MESSAGE_ID))
    (new_week,) = old_sync(blobs, inbox_a, (PLAIN.replace(b"Nothing odd", b"Weekly report"), {}))

    report = messages_reparse(tenant=tenant_a)
    (answer,) = old_sync(blobs, inbox_a, (SIBLING.replace(b"Re: Hello", b"Re: Weekly report"), {}))

    assert report.rethreaded == 1
    assert fresh(old_week).message_id_synthetic is True
    assert fresh(answer).thread_id == fresh(new_week).thread_id != fresh(old_week).thread_id


def test_the_command_finds_an_account_without_its_tenant(committed_db, stored, blobs, tenant_a, user_a):
    """`--account` alone: the account's tenant is looked up (admin alias)."""
    other_inbox = FolderFactory(account=EmailAccountFactory(tenant=tenant_a, user=user_a), name="INBOX")
    (other,) = old_sync(blobs, other_inbox, (PARENT, OLD_PARENT))

    counts = reparse("--account", str(other_inbox.account_id))

    assert counts == {"tenant-a": {"examined": 1, "changed": 1, "missing": 0, "unparseable": 0}}
    assert fresh(other).message_id == "odd-id-without-at-sign"
    assert fresh(stored["parent"]).message_id == ""
