"""Changes made through the API reach the real Dovecot, and the sync
afterwards leaves them as they are."""

import base64
import json

import pytest
import redis
from django.conf import settings
from imapclient import IMAPClient

from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import _Client
from mailboxes.sync import account_sync
from mailboxes.tasks import sync_account_task, write_back_task
from mailboxes.tests.helpers import assert_in_step
from mailboxes.tests.test_imap_sync import seed
from mailboxes.writeback import _copyuid_map, account_write_back
from messages.models import Folder, Message, MessageChange
from messages.tests.corpus import corpus_files

pytestmark = pytest.mark.django_db

MAIL = corpus_files("notmuch", "lkml")[:6]


@pytest.fixture
def synced(imap_account, mailbox):
    """INBOX with six messages (some read, one flagged), Archive, Trash, Projects."""
    seed(mailbox, {"INBOX": MAIL, "Archive": [], "Trash": [], "Projects": []})
    sync(imap_account)
    return imap_account


def sync(account):
    return account_sync(tenant_id=account.tenant_id, account_id=account.id)


def write_back(account):
    return account_write_back(tenant_id=account.tenant_id, account_id=account.id)


def rows(account, **filters) -> list[Message]:
    with tenant_scope(account.tenant_id):
        return list(
            Message.objects.filter(account=account, **filters).select_related("folder").order_by("imap_uid")
        )


def folder(account, name) -> Folder:
    with tenant_scope(account.tenant_id):
        return Folder.objects.get(account=account, name=name)


def server_flags(mailbox, name, uid) -> set[bytes]:
    mailbox.select_folder(name, readonly=True)
    return set(mailbox.get_flags([uid]).get(uid, ()))


def server_message_ids(mailbox, name) -> dict[int, str]:
    """UID -> Message-ID (as stored: no angle brackets) of every message in a server folder."""
    mailbox.select_folder(name, readonly=True)
    fetched = mailbox.fetch(mailbox.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    return {
        uid: data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[1].strip().strip("<>")
        for uid, data in fetched.items()
    }


def count_calls(monkeypatch, name) -> list:
    calls = []
    original = getattr(IMAPClient, name)

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IMAPClient, name, counted)
    return calls


def test_flags_round_trip(synced, mailbox, client_a):
    unread = rows(synced, is_read=False)[0]
    flagged = rows(synced, is_flagged=True)[0]

    client_a.patch(f"/api/messages/{unread.id}/", {"is_read": True}, format="json")
    client_a.patch(f"/api/messages/{flagged.id}/", {"is_flagged": False}, format="json")
    report = write_back(synced)

    assert report.written == 2
    assert b"\\Seen" in server_flags(mailbox, "INBOX", unread.imap_uid)
    assert b"\\Flagged" not in server_flags(mailbox, "INBOX", flagged.imap_uid)
    sync(synced)
    [after] = rows(synced, id=unread.id)
    assert after.is_read
    assert not rows(synced, id=flagged.id)[0].is_flagged
    assert_in_step(mailbox, synced)


def test_move_round_trip_keeps_the_row(synced, mailbox, client_a):
    message = rows(synced)[0]
    archive = folder(synced, "Archive")

    client_a.post(f"/api/messages/{message.id}/move/", {"folder": archive.id}, format="json")
    write_back(synced)

    [moved] = rows(synced, id=message.id)
    assert moved.folder_id == archive.id and moved.imap_uid is not None
    mailbox.select_folder("Archive", readonly=True)
    assert mailbox.search(["ALL"]) == [moved.imap_uid]
    mailbox.select_folder("INBOX", readonly=True)
    assert message.imap_uid not in mailbox.search(["ALL"])
    sync(synced)
    assert [m.id for m in rows(synced, folder=archive)] == [message.id]  # not fetched a second time
    assert_in_step(mailbox, synced)


def test_delete_to_trash_then_for_good(synced, mailbox, client_a):
    message = rows(synced)[0]

    client_a.delete(f"/api/messages/{message.id}/")
    write_back(synced)
    mailbox.select_folder("Trash", readonly=True)
    assert len(mailbox.search(["ALL"])) == 1
    sync(synced)
    assert_in_step(mailbox, synced)

    client_a.delete(f"/api/messages/{message.id}/")
    write_back(synced)

    mailbox.select_folder("Trash", readonly=True)
    assert mailbox.search(["ALL"]) == []
    assert rows(synced, id=message.id) == []
    sync(synced)
    assert_in_step(mailbox, synced)


def test_a_sync_before_the_write_back_does_not_undo_the_change(synced, mailbox, client_a):
    message = rows(synced, is_read=False)[0]
    client_a.patch(f"/api/messages/{message.id}/", {"is_read": True}, format="json")
    # Another client touches the same message: the sync sees it changed.
    mailbox.select_folder("INBOX")
    mailbox.add_flags([message.imap_uid], [b"\\Answered"])

    sync(synced)
    assert rows(synced, id=message.id)[0].is_read

    write_back(synced)
    sync(synced)
    [after] = rows(synced, id=message.id)
    assert after.is_read and after.is_answered
    assert_in_step(mailbox, synced)


def test_a_change_the_server_cannot_take_is_undone_and_audited(synced, mailbox, client_a):
    message = rows(synced)[0]
    projects = folder(synced, "Projects")
    client_a.post(f"/api/messages/{message.id}/move/", {"folder": projects.id}, format="json")
    mailbox.delete_folder("Projects")  # gone on the server before the write-back

    report = write_back(synced)

    assert report.failed == 1
    [back] = rows(synced, id=message.id)
    assert (back.folder.name, back.imap_uid) == ("INBOX", message.imap_uid)
    with tenant_scope(synced.tenant_id):
        change = MessageChange.objects.get(message_id=message.id)
        assert change.state == "failed" and "Projects" in change.last_error
        assert AuditLog.objects.filter(action="message.change_failed", object_id=message.id).exists()
    sync(synced)
    assert_in_step(mailbox, synced)


def test_refused_credentials_undo_every_pending_change(synced, mailbox, client_a, devmail):
    message = rows(synced, is_read=False)[0]
    client_a.patch(f"/api/messages/{message.id}/", {"is_read": True}, format="json")
    devmail.add_user(synced.username, "another-password")  # the password changed on the server

    result = write_back_task.apply(args=[str(synced.tenant_id), str(synced.id)]).get()

    assert result["result"] == "failed"
    assert not rows(synced, id=message.id)[0].is_read
    assert b"\\Seen" not in server_flags(mailbox, "INBOX", message.imap_uid)


def test_a_sync_task_queues_the_write_back_of_changes_left_pending(synced, client_a):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    message = rows(synced, is_read=False)[0]
    client_a.patch(f"/api/messages/{message.id}/", {"is_read": True}, format="json")
    broker.delete("celery")  # as if the change's own task had been lost

    result = sync_account_task.apply(
        kwargs={"tenant_id": str(synced.tenant_id), "account_id": str(synced.id)}
    )

    assert result.get()["result"] == "ok"
    queued = [json.loads(raw) for raw in broker.lrange("celery", 0, -1)]
    assert [q["headers"]["task"] for q in queued] == ["mailboxes.tasks.write_back"]
    args, _, _ = json.loads(base64.b64decode(queued[0]["body"]))
    assert args == [str(synced.tenant_id), str(synced.id)]


def test_bulk_flags_go_in_one_store_per_folder_and_flag_set(synced, mailbox, client_a, monkeypatch):
    messages = rows(synced, is_flagged=False)
    assert len(messages) > 1
    stores = count_calls(monkeypatch, "add_flags")
    ids = [str(m.id) for m in messages]
    client_a.post("/api/messages/bulk/update/", {"ids": ids, "is_flagged": True}, format="json")

    report = write_back(synced)

    assert report.written == len(messages)
    assert len(stores) == 1
    assert all(b"\\Flagged" in server_flags(mailbox, "INBOX", m.imap_uid) for m in messages)
    sync(synced)
    assert_in_step(mailbox, synced)


def assert_bulk_moved(account, mailbox, messages, target):
    """Every row is in the target folder under the UID the server gave its
    message there, and a sync afterwards changes nothing."""
    on_server = server_message_ids(mailbox, target.name)
    moved = rows(account, folder=target)
    assert sorted(m.id for m in moved) == sorted(m.id for m in messages)
    assert {m.imap_uid: m.message_id for m in moved} == on_server
    sync(account)
    assert sorted(m.id for m in rows(account, folder=target)) == sorted(m.id for m in messages)
    assert_in_step(mailbox, account)


def test_a_bulk_move_is_one_move_and_each_row_gets_its_new_uid(synced, mailbox, client_a, monkeypatch):
    messages = rows(synced)[:4]
    archive = folder(synced, "Archive")
    moves = count_calls(monkeypatch, "move")

    client_a.post(
        "/api/messages/bulk/move/",
        {"ids": [str(m.id) for m in messages], "folder": archive.id},
        format="json",
    )
    report = write_back(synced)

    assert report.written == 4
    assert len(moves) == 1 and sorted(moves[0][0]) == sorted(m.imap_uid for m in messages)
    assert_bulk_moved(synced, mailbox, messages, archive)


@pytest.mark.parametrize("copyuid", [True, False], ids=["with-copyuid", "without-copyuid"])
def test_a_bulk_move_without_the_move_extension_copies_and_expunges(
    synced, mailbox, client_a, monkeypatch, copyuid
):
    """A server without MOVE gets COPY, \\Deleted and UID EXPUNGE; without
    COPYUID in its answer, each new UID is found by Message-ID."""
    original_capability = IMAPClient.has_capability
    monkeypatch.setattr(
        IMAPClient, "has_capability", lambda self, c: c != "MOVE" and original_capability(self, c)
    )
    copies = []
    original_copy = _Client.copy_with_code

    def copy(self, *args):
        copies.append(args)
        response = original_copy(self, *args)
        assert response.startswith(b"[COPYUID ")  # Dovecot's answer
        return response if copyuid else b"Copy completed."  # as a server without UIDPLUS answers

    monkeypatch.setattr(_Client, "copy_with_code", copy)
    messages = rows(synced)[:3]
    projects = folder(synced, "Projects")

    client_a.post(
        "/api/messages/bulk/move/",
        {"ids": [str(m.id) for m in messages], "folder": projects.id},
        format="json",
    )
    report = write_back(synced)

    assert report.written == 3 and len(copies) == 1
    assert_bulk_moved(synced, mailbox, messages, projects)


@pytest.mark.parametrize(
    ("response", "moved", "pairs"),
    [
        (b"[COPYUID 7 3,1:2 10:12] Done", 3, {3: 10, 1: 11, 2: 12}),  # RFC 4315: in order
        (b"* OK [COPYUID 7 5 9] a\r\n* OK [COPYUID 7 6:7 20:21] b", 3, {5: 9, 6: 20, 7: 21}),
        (b"[COPYUID 7 1:3 10:11] sizes differ", 3, {}),
        (b"[COPYUID 7 1:4294967295 1:4294967295] hostile", 3, {}),  # never expanded
        (b"[COPYUID 7 1 2] [COPYUID 7 3 4] each code bounded", 1, {1: 2, 3: 4}),
        (b"Copy completed.", 2, {}),
    ],
)
def test_copyuid_codes_pair_old_and_new_uids(db, response, moved, pairs):
    assert _copyuid_map(response, moved) == pairs


def test_a_bulk_delete_for_good_is_one_expunge(synced, mailbox, client_a, monkeypatch):
    messages = rows(synced)[:3]
    kept = rows(synced)[3:]
    expunges = count_calls(monkeypatch, "uid_expunge")

    response = client_a.post(
        "/api/messages/bulk/delete/", {"ids": [str(m.id) for m in messages], "permanent": True}, format="json"
    )
    assert response.status_code == 204, response.content
    report = write_back(synced)

    assert report.written == 3
    assert len(expunges) == 1 and sorted(expunges[0][0]) == sorted(m.imap_uid for m in messages)
    assert sorted(server_message_ids(mailbox, "INBOX")) == sorted(m.imap_uid for m in kept)
    assert rows(synced, id__in=[m.id for m in messages]) == []
    sync(synced)
    assert_in_step(mailbox, synced)
