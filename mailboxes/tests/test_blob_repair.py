"""`manage.py repairblobs`: damaged and missing blobs found and fetched again
from a real Dovecot."""

import io
from email.message import EmailMessage

import pytest
from django.core.management import CommandError, call_command

from emailclient.core.tenancy import tenant_scope
from mailboxes.sync import account_sync
from messages.blobs import default_store
from messages.models import Attachment, Message

pytestmark = pytest.mark.django_db


def _mail(n: int, attachment: bytes | None = None) -> bytes:
    mail = EmailMessage()
    mail["From"] = "sender@example.com"
    mail["To"] = "user@example.com"
    mail["Subject"] = f"repair {n}"
    mail["Message-ID"] = f"<repair-{n}@example.com>"
    mail.set_content(f"body {n}\n" * 40)
    if attachment is not None:
        mail.add_attachment(attachment, maintype="application", subtype="octet-stream", filename=f"{n}.bin")
    return mail.as_bytes()


def _synced(account, mailbox):
    mailbox.append("INBOX", _mail(1))
    mailbox.append("INBOX", _mail(2, attachment=b"first attachment\n" * 200))
    mailbox.append("INBOX", _mail(3))
    account_sync(tenant_id=account.tenant_id, account_id=account.id)
    with tenant_scope(account.tenant_id):
        messages = {m.subject: m for m in Message.objects.filter(account=account)}
        [attachment] = Attachment.objects.filter(message__account=account)
    return messages, attachment


def _run(*args) -> str:
    out = io.StringIO()
    call_command("repairblobs", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_damaged_and_missing_blobs_are_fetched_again(imap_account, mailbox, tenant_a):
    messages, attachment = _synced(imap_account, mailbox)
    store = default_store()
    tenant = imap_account.tenant_id
    truncated = store.path(tenant, messages["repair 1"].raw_blob_key)
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbled = store.path(tenant, attachment.content_hash)
    data = bytearray(garbled.read_bytes())
    data[30] ^= 0xFF
    garbled.write_bytes(bytes(data))
    store.path(tenant, messages["repair 3"].raw_blob_key).unlink()
    damaged = {messages["repair 1"].raw_blob_key, attachment.content_hash, messages["repair 3"].raw_blob_key}

    found = _run("--tenant", tenant_a.slug, "--dry-run")
    assert "3 damaged or missing" in found
    assert all(store.check(tenant, key) is not None for key in damaged)  # a dry run fetches nothing

    output = _run("--tenant", tenant_a.slug)

    assert "3 damaged or missing, 3 repaired, 0 not repairable" in output
    for key in damaged:
        assert store.check(tenant, key) is None
    assert store.get(tenant, attachment.content_hash) == b"first attachment\n" * 200
    assert b"Subject: repair 3" in store.get(tenant, messages["repair 3"].raw_blob_key)
    assert "0 damaged or missing" in _run("--tenant", tenant_a.slug)


def test_a_blob_whose_message_left_the_server_is_reported(imap_account, mailbox, tenant_a):
    messages, _attachment = _synced(imap_account, mailbox)
    store = default_store()
    key = messages["repair 1"].raw_blob_key
    store.path(imap_account.tenant_id, key).write_bytes(b"")
    mailbox.select_folder("INBOX")
    mailbox.delete_messages([messages["repair 1"].imap_uid])
    mailbox.expunge()

    with pytest.raises(CommandError, match="1 blob"):
        _run("--tenant", tenant_a.slug)
    assert store.check(imap_account.tenant_id, key) is not None
