"""`manage.py purgeaccounts` (and the daily beat task): soft-deleted accounts
past their retention go for good, with their mail, credentials and the
blobs nothing else needs."""

import io
import os
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import EmailAccount
from accounts.services import account_delete
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope
from messages.blobs import blob_key
from messages.models import Attachment, Folder, Message
from messages.tests.factories import AttachmentFactory, FolderFactory, MessageFactory


def _account_with_mail(tenant, user, blobs, *, shared: bytes, own: bytes):
    account = EmailAccountFactory(tenant=tenant, user=user)
    folder = FolderFactory(account=account, name="INBOX", type="inbox")
    message = MessageFactory(folder=folder, raw_blob_key=blobs.put(tenant.id, own))
    AttachmentFactory(message=message, content_hash=blobs.put(tenant.id, shared))
    return account


def _deleted(account, *, days_ago: float):
    account_delete(account=account, actor=None)
    with tenant_scope(account.tenant_id):
        EmailAccount.objects.filter(id=account.id).update(
            deleted_at=timezone.now() - timedelta(days=days_ago)
        )


def _age_blobs(blobs, tenant_id, *, hours: float):
    old = time.time() - hours * 3600
    for blob in blobs.blobs(tenant_id):
        os.utime(blob.path, (old, old))


def _rows(model, tenant, **filters) -> int:
    with tenant_scope(tenant.id):
        return model.objects.filter(tenant_id=tenant.id, **filters).count()


def test_accounts_deleted_past_their_retention_are_purged(
    committed_db, tenant_a, tenant_b, user_a, user_b, blobs
):
    assert settings.ACCOUNT_PURGE_RETENTION_DAYS == 30
    old = _account_with_mail(tenant_a, user_a, blobs, shared=b"attachment both keep", own=b"raw of the old")
    recent = _account_with_mail(tenant_a, user_a, blobs, shared=b"recent's", own=b"raw of the recent")
    kept = _account_with_mail(tenant_a, user_a, blobs, shared=b"attachment both keep", own=b"raw of the kept")
    other = _account_with_mail(tenant_b, user_b, blobs, shared=b"b's", own=b"raw of the old")  # B's copy
    _deleted(old, days_ago=31)
    _deleted(recent, days_ago=29)
    _deleted(other, days_ago=1)
    _age_blobs(blobs, tenant_a.id, hours=48)
    _age_blobs(blobs, tenant_b.id, hours=48)
    old_raw = blobs.path(tenant_a.id, Message.objects.using("admin").get(account=old).raw_blob_key)

    dry = io.StringIO()
    call_command("purgeaccounts", "--dry-run", stdout=dry)
    assert "1 account(s) to purge, with 1 message(s)" in dry.getvalue()
    assert _rows(Message, tenant_a, account=old) == 1

    out = io.StringIO()
    call_command("purgeaccounts", stdout=out)

    assert "1 account(s) purged, with 1 message(s); 1 blob(s) removed" in out.getvalue()
    assert not EmailAccount.objects.using("admin").filter(id=old.id).exists()  # credentials with it
    assert _rows(Message, tenant_a, account=old) == 0
    assert _rows(Folder, tenant_a, account=old) == 0
    assert _rows(Attachment, tenant_a, message__account=old) == 0
    assert not old_raw.exists()
    # The attachment the kept account shares stays; the others are untouched.
    assert blobs.get(tenant_a.id, blob_key(b"attachment both keep")) == b"attachment both keep"
    for account, tenant in ((recent, tenant_a), (kept, tenant_a), (other, tenant_b)):
        assert _rows(Message, tenant, account=account) == 1
    assert blobs.get(tenant_b.id, blob_key(b"raw of the old")) == b"raw of the old"
    with tenant_scope(tenant_a.id):
        assert AuditLog.objects.filter(action="account.purge", object_id=old.id).count() == 1

    again = io.StringIO()
    call_command("purgeaccounts", stdout=again)
    assert "0 account(s) purged" in again.getvalue()


def test_the_purge_runs_daily_from_beat():
    from mailboxes.tasks import purge_deleted_accounts_task

    entry = settings.CELERY_BEAT_SCHEDULE["accounts-purge-deleted"]
    assert entry["schedule"] == 24 * 3600.0
    assert entry["task"] == purge_deleted_accounts_task.name


def test_a_negative_retention_is_refused():
    with pytest.raises(CommandError, match="at least 0"):
        call_command("purgeaccounts", "--days", "-1")
