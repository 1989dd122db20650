"""A sync's blobs survive a power loss: each blob's file is fsynced, then
renamed into place, then its folder fsynced, all before the transaction
whose rows name the blob commits. Traced with a real store, a real Dovecot
and real commits: spies that record each call and make the real one."""

import os
from email.message import EmailMessage

import pytest
from django.db.backends.base.base import BaseDatabaseWrapper

from mailboxes.sync import account_sync
from messages.blobs import default_store

REFERENCED = """
    SELECT raw_blob_key FROM email_messages
    UNION SELECT content_hash FROM email_attachments
    UNION SELECT raw_blob_key FROM email_quarantine WHERE raw_blob_key <> ''
"""


def _message(n: int) -> bytes:
    mail = EmailMessage()
    mail["From"] = "sender@example.com"
    mail["To"] = "user@example.com"
    mail["Subject"] = f"message {n}"
    mail["Message-ID"] = f"<durable-{n}@example.com>"
    mail.set_content(f"body {n}\n")
    if n % 2:
        mail.add_attachment(
            f"attachment {n}\n".encode() * 50, maintype="application", subtype="pdf", filename=f"{n}.pdf"
        )
    return mail.as_bytes()


@pytest.fixture
def trace(monkeypatch):
    events: list[tuple] = []
    real_fsync, real_replace, real_commit = os.fsync, os.replace, BaseDatabaseWrapper.commit

    def fsync(fd):
        path = os.path.realpath(f"/proc/self/fd/{fd}")
        real_fsync(fd)
        events.append(("fsync", path))

    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))

    def commit(self):
        keys: set[str] = set()
        if self.alias == "default" and self.connection is not None:
            # The rows this commit makes visible, read in its own transaction.
            with self.cursor() as cursor:
                cursor.execute(REFERENCED)
                keys = {key for (key,) in cursor.fetchall()}
        events.append(("commit", keys))
        return real_commit(self)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(BaseDatabaseWrapper, "commit", commit)
    return events


def test_blobs_are_on_disk_and_named_before_their_rows_commit(
    committed_db, imap_account, mailbox, mail_settings, trace
):
    mail_settings.SYNC_BATCH_MESSAGES = 4  # several batches, several commits
    for n in range(14):
        mailbox.append("INBOX", _message(n))

    report = account_sync(tenant_id=imap_account.tenant_id, account_id=imap_account.id)

    assert report.new == 14
    store = default_store()
    checked: set[str] = set()
    commits = [(i, e[1]) for i, e in enumerate(trace) if e[0] == "commit" and e[1]]
    assert len(commits) >= 4
    for at, keys in commits:
        for key in keys - checked:
            final = os.path.realpath(store.path(imap_account.tenant_id, key))
            [renamed] = [i for i, e in enumerate(trace) if e[0] == "rename" and e[2] == final]
            tmp = trace[renamed][1]
            file_synced = trace.index(("fsync", tmp))
            folder_synced = next(
                i for i, e in enumerate(trace) if i > renamed and e == ("fsync", os.path.dirname(final))
            )
            assert file_synced < renamed < folder_synced < at, (key, file_synced, renamed, folder_synced, at)
            checked.add(key)
    assert len(checked) == 14 + 7  # every raw message and attachment
