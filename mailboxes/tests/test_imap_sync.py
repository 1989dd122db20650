"""The sync engine against a real Dovecot and the real PostgreSQL.

After every sync the database must match the server exactly: the same
folders, the same UID set per folder (stored or quarantined), the same flags.
"""

import threading

import pytest
from django.db import connection
from django.db.models import Count

from emailclient.core.tenancy import tenant_scope
from mailboxes.sync import account_sync
from mailboxes.tests.helpers import assert_in_step
from messages.locks import SyncAlreadyRunning, account_sync_lock
from messages.models import Attachment, Folder, Message, QuarantinedMessage
from messages.tests.corpus import corpus_files

CORPUS = {
    "INBOX": corpus_files("mime-parser-cases"),
    "Archive": corpus_files("torture"),
    "Lists": corpus_files("notmuch", "lkml"),
    "Lists.threading": corpus_files("notmuch", "threading") + corpus_files("notmuch", "broken"),
    "Old": corpus_files("notmuch", "html"),
}


def sync(account):
    return account_sync(tenant_id=account.tenant_id, account_id=account.id)


def seed(client, corpus=CORPUS) -> int:
    count = 0
    for folder, paths in corpus.items():
        if not client.folder_exists(folder):
            client.create_folder(folder)
        for i, path in enumerate(paths):
            flags = [b"\\Seen"] if i % 3 else []
            if i % 7 == 0:
                flags.append(b"\\Flagged")
            client.append(folder, path.read_bytes(), flags=flags)
            count += 1
    return count


def scoped(account, fn):
    with tenant_scope(account.tenant_id):
        return fn()


@pytest.mark.django_db
def test_initial_sync_stores_or_quarantines_every_corpus_message(imap_account, mailbox):
    appended = seed(mailbox)

    report = sync(imap_account)

    assert report.new + report.quarantined == appended
    assert report.new > appended * 0.9
    assert_in_step(mailbox, imap_account)
    quarantined = scoped(imap_account, lambda: list(QuarantinedMessage.objects.filter(account=imap_account)))
    assert len(quarantined) == report.quarantined
    assert all(q.reason for q in quarantined)
    folders = scoped(imap_account, lambda: {f.name: f for f in Folder.objects.filter(account=imap_account)})
    assert {name: f.type for name, f in folders.items()}.items() >= {
        "INBOX": "inbox",
        "Sent": "sent",
        "Drafts": "drafts",
        "Trash": "trash",
        "Junk": "spam",
        "Archive": "archive",
        "Lists": "custom",
    }.items()
    assert folders["Lists.threading"].parent_id == folders["Lists"].id
    assert folders["Lists.threading"].delimiter == "."
    inbox = folders["INBOX"]
    assert inbox.total_count == scoped(imap_account, lambda: Message.objects.filter(folder=inbox).count())
    assert inbox.unread_count == scoped(
        imap_account, lambda: Message.objects.filter(folder=inbox, is_read=False).count()
    )
    assert inbox.uidvalidity and inbox.uidnext and inbox.highestmodseq


@pytest.mark.django_db
def test_stored_messages_are_complete(imap_account, mailbox, mail_settings):
    mailbox.append("INBOX", (corpus_files("mime-parser-cases", "legacy")[23]).read_bytes(), flags=[b"\\Seen"])
    sync(imap_account)

    message = scoped(imap_account, lambda: Message.objects.get(account=imap_account))
    assert message.subject == "Die Hasen und die Frösche"
    assert message.is_read and not message.is_flagged
    assert message.to == [{"name": "Jürgen Schmürgen", "address": "jschmuergen@example.com"}]
    assert message.received_at is not None and message.size_bytes > 0
    assert message.thread_id is not None
    from messages.blobs import default_store

    raw = default_store().get(message.tenant_id, message.raw_blob_key)
    assert b"Die Hasen" in raw
    attachments = scoped(imap_account, lambda: list(Attachment.objects.filter(message=message)))
    assert {a.filename for a in attachments} >= {"HasenundFrösche.txt"}
    for attachment in attachments:
        data = default_store().get(message.tenant_id, attachment.content_hash)
        assert len(data) == attachment.size_bytes


def test_incremental_sync_new_mail_flags_expunges_renames_and_deletes(committed_db, imap_account, mailbox):
    """With real commits, so the sync runs its writer thread as in production."""
    seed(mailbox)
    sync(imap_account)
    before = scoped(
        imap_account,
        lambda: dict(Message.objects.filter(account=imap_account).values_list("id", "folder__name")),
    )
    renamed = scoped(imap_account, lambda: Folder.objects.get(account=imap_account, name="Lists.threading"))

    # New mail, flag changes, expunges, a rename and a delete on the server.
    for path in corpus_files("notmuch", "attachment"):
        mailbox.append("INBOX", path.read_bytes())
    mailbox.select_folder("Archive")
    uids = mailbox.search(["ALL"])
    mailbox.add_flags(uids[:5], [b"\\Seen", b"\\Answered"])
    mailbox.remove_flags(uids[5:8], [b"\\Seen"])
    mailbox.add_flags(uids[8:9], [b"$Label1"])
    mailbox.select_folder("Lists")
    gone = mailbox.search(["ALL"])[:4]
    mailbox.delete_messages(gone)
    mailbox.expunge()
    mailbox.close_folder()
    mailbox.rename_folder("Lists.threading", "Threads")
    mailbox.delete_folder("Old")

    report = sync(imap_account)

    assert report.new == len(corpus_files("notmuch", "attachment"))
    assert report.updated >= 5  # flags of quarantined messages are not tracked
    assert report.expunged >= 4
    assert report.bodies_fetched == report.new
    assert_in_step(mailbox, imap_account)
    after = scoped(imap_account, lambda: Folder.objects.get(account=imap_account, name="Threads"))
    assert after.id == renamed.id, "a renamed folder keeps its row and its messages"
    kept = scoped(
        imap_account,
        lambda: dict(Message.objects.filter(account=imap_account).values_list("id", "folder__name")),
    )
    moved = [i for i, name in before.items() if name == "Lists.threading"]
    assert all(kept[i] == "Threads" for i in moved)
    assert not scoped(imap_account, lambda: Folder.objects.filter(account=imap_account, name="Old").exists())

    # Nothing changed: no body fetched, nothing written.
    quiet = sync(imap_account)
    assert (quiet.new, quiet.updated, quiet.expunged, quiet.bodies_fetched) == (0, 0, 0, 0)
    assert_in_step(mailbox, imap_account)


@pytest.mark.django_db
def test_uidvalidity_change_keeps_rows_and_adds_what_arrived(imap_account, mailbox, devmail, mail_user):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "lkml")[:40]})
    sync(imap_account)
    ids_before = scoped(imap_account, lambda: set(Message.objects.values_list("id", flat=True)))
    mailbox.logout()

    # Stopped: Dovecot forgets its UID list and renumbers under a new UIDVALIDITY.
    devmail.stop()
    devmail.reset_uidvalidity(mail_user, "INBOX")
    devmail.start()
    from mailboxes.tests.conftest import imap

    client = imap(devmail, mail_user)
    client.append("INBOX", corpus_files("notmuch", "lkml")[40].read_bytes())

    report = sync(imap_account)

    assert_in_step(client, imap_account)
    ids_after = scoped(imap_account, lambda: set(Message.objects.values_list("id", flat=True)))
    assert ids_before < ids_after, "old rows re-matched, not duplicated or lost"
    assert len(ids_after) == 41
    assert report.new == 41  # 40 re-matched + 1 new
    duplicates = scoped(
        imap_account,
        lambda: Message.objects.values("content_hash").annotate(n=Count("id")).filter(n__gt=1).count(),
    )
    assert duplicates == 0
    client.logout()


@pytest.mark.django_db
def test_uidvalidity_bump_while_running(imap_account, mailbox, devmail, mail_user):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")})
    sync(imap_account)
    ids_before = scoped(imap_account, lambda: set(Message.objects.values_list("id", flat=True)))
    devmail.reset_uidvalidity(mail_user, "INBOX")  # disconnects our fixture's session
    from mailboxes.tests.conftest import imap

    client = imap(devmail, mail_user)
    sync(imap_account)
    assert_in_step(client, imap_account)
    assert scoped(imap_account, lambda: set(Message.objects.values_list("id", flat=True))) == ids_before
    client.logout()


def test_one_sync_per_account_at_a_time(committed_db, imap_account, mailbox):
    """While one worker holds the account's sync, another one's attempt is
    refused at once (the task then reports that it joined)."""
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:3]})
    outcome = []

    def other_worker():
        try:
            sync(imap_account)
            outcome.append("ran")
        except SyncAlreadyRunning:
            outcome.append("refused")
        finally:
            connection.close()

    with account_sync_lock(imap_account.id):
        worker = threading.Thread(target=other_worker)
        worker.start()
        worker.join()
    assert outcome == ["refused"]
    sync(imap_account)  # the lock is free again
    assert_in_step(mailbox, imap_account)
