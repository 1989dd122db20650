"""Edge cases found in review: reused UIDVALIDITY, refused folders, withheld
FETCH items, replayed batches, partial folder lists, joined triggers."""

import pytest
from django.db import connections
from imapclient.exceptions import IMAPClientError

from emailclient.core.tenancy import tenant_scope
from mailboxes import sync_status
from mailboxes.imap import ImapSession, MailServerError
from mailboxes.services import sync_request
from mailboxes.sync import account_sync, server_config
from mailboxes.sync.engine import _Engine
from mailboxes.sync.pipeline import _Pipeline
from mailboxes.tasks import sync_account_task
from mailboxes.tests.conftest import PASSWORD
from mailboxes.tests.helpers import assert_in_step
from mailboxes.tests.test_imap_sync import seed
from messages.blobs import default_store
from messages.models import Message, QuarantinedMessage
from messages.tests.corpus import corpus_files

pytestmark = pytest.mark.django_db


def sync(account):
    return account_sync(tenant_id=account.tenant_id, account_id=account.id)


def stored(account, **filters):
    with tenant_scope(account.tenant_id):
        return list(
            Message.objects.filter(account=account, **filters).values_list("folder__name", "message_id")
        )


def test_reused_uidvalidity_is_not_taken_for_a_rename(imap_account, mailbox, devmail, mail_user):
    lkml = corpus_files("notmuch", "lkml")
    seed(mailbox, {"Projects": lkml[:5]})
    sync(imap_account)
    old_validity = devmail.uidvalidity(mail_user, "Projects")
    mailbox.delete_folder("Projects")
    seed(mailbox, {"Receipts": lkml[5:9]})
    # A server that hands out the same UIDVALIDITY again.
    devmail.doveadm("mailbox", "update", "-u", mail_user, "--uid-validity", str(old_validity), "Receipts")

    sync(imap_account)

    assert_in_step(mailbox, imap_account)
    assert {name for name, _ in stored(imap_account)} == {"Receipts"}
    assert len(stored(imap_account)) == 4


def test_a_folder_the_server_refuses_is_skipped(imap_account, mailbox, monkeypatch):
    seed(
        mailbox,
        {"INBOX": corpus_files("notmuch", "threading")[:3], "Secret": corpus_files("notmuch", "lkml")[:2]},
    )
    real = ImapSession.folder_status

    def refuse_secret(self, name):
        if name == "Secret":
            raise IMAPClientError("NO [NOPERM] Permission denied")  # an ACL we cannot set up here
        return real(self, name)

    monkeypatch.setattr(ImapSession, "folder_status", refuse_secret)
    report = sync(imap_account)
    assert list(report.folder_errors) == ["Secret"]
    assert {name for name, _ in stored(imap_account)} == {"INBOX"}
    assert len(stored(imap_account)) == 3


def test_messages_the_server_withholds_are_quarantined_not_lost(imap_account, mailbox, monkeypatch):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:4]})
    real = ImapSession.fetch_full

    def withhold_uid_2(self, uids):
        return {uid: m for uid, m in real(self, uids).items() if uid != 2}

    monkeypatch.setattr(ImapSession, "fetch_full", withhold_uid_2)
    sync(imap_account)
    with tenant_scope(imap_account.tenant_id):
        reasons = list(QuarantinedMessage.objects.values_list("imap_uid", "reason"))
    assert reasons == [(2, "the server did not return this message")]
    assert_in_step(mailbox, imap_account)


def test_a_replayed_batch_is_a_no_op(imap_account, mailbox, mail_settings):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:4]})
    sync(imap_account)
    with tenant_scope(imap_account.tenant_id):
        account = type(imap_account).objects.select_related("tenant").get(id=imap_account.id)
        folder = account.folders.get(name="INBOX")
    engine = _Engine(account, default_store(), None)
    with ImapSession(server_config(account), account.username, PASSWORD) as session:
        session.select("INBOX")
        metas = list(session.fetch_meta([1, 2, 3, 4]).values())
        batch = engine.prepare_batch(session, folder, metas, engine.rematch_pool(folder))
    with _Pipeline(threaded=False) as pipeline:
        pipeline.submit(lambda: engine.commit_batch(batch))
    assert len(stored(imap_account)) == 4
    assert_in_step(mailbox, imap_account)


def test_a_folder_list_without_inbox_changes_nothing(imap_account, mailbox, monkeypatch):
    seed(
        mailbox,
        {"INBOX": corpus_files("notmuch", "threading")[:3], "Lists": corpus_files("notmuch", "lkml")[:2]},
    )
    sync(imap_account)
    real = ImapSession.list_folders
    monkeypatch.setattr(
        ImapSession, "list_folders", lambda self: [f for f in real(self) if f.name != "INBOX"]
    )
    with pytest.raises(MailServerError, match="no INBOX"):
        sync(imap_account)
    assert len(stored(imap_account)) == 5


def test_a_trigger_that_joins_a_running_sync_releases_its_claim(imap_account):
    task_id, joined = sync_request(account=imap_account)
    assert not joined
    other = connections.create_connection("default")  # another worker holds the account
    try:
        with other.cursor() as cursor:
            key = int.from_bytes(imap_account.id.bytes[:8], "big", signed=True)
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
            result = sync_account_task.apply(
                kwargs={"tenant_id": str(imap_account.tenant_id), "account_id": str(imap_account.id)},
                task_id=task_id,
            ).get()
    finally:
        other.close()
    assert result == {"result": "joined"}
    assert sync_request(account=imap_account)[1] is False  # a new sync is queued, not "joined" to a ghost
    assert sync_status.sync_status_get(imap_account.id)["state"] == sync_status.QUEUED
