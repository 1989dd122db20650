"""The draft's copy in the server's Drafts folder (the real Dovecot): one copy
of the current version, none once sent or deleted, whatever crashed or
changed in between."""

import email
import email.policy

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from compose import drafts_folder
from compose.drafts_folder import draft_copy_sync, draft_message_id
from compose.models import Draft, DraftAttachment, Status
from emailclient.core.models import Tenant, TenantMembership
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import MailServerError
from mailboxes.services import account_sync_run
from messages.blobs import default_store
from messages.locks import SyncAlreadyRunning, account_sync_lock
from messages.models import Folder


@pytest.fixture
def synced_account(smtp_account):
    account_sync_run(tenant_id=smtp_account.tenant_id, account_id=smtp_account.id, index_inline=True)
    return smtp_account


def make_draft(account, **fields) -> Draft:
    values = {
        "to": [{"name": "Bob", "address": "bob@example.net"}],
        "subject": "Plans für Montag",
        "text_body": "First version\r\n",
        **fields,
    }
    with tenant_scope(account.tenant_id):
        return Draft.objects.create(
            tenant_id=account.tenant_id, user_id=account.user_id, account=account, **values
        )


def edit(draft, **fields) -> None:
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(version=reload(draft).version + 1, **fields)


def reload(draft) -> Draft:
    with tenant_scope(draft.tenant_id):
        return Draft.objects.get(id=draft.id)


def sync_copy(draft) -> str:
    return draft_copy_sync(tenant_id=draft.tenant_id, draft_id=draft.id)


def drafts_on_server(mailbox) -> dict[int, tuple[email.message.EmailMessage, tuple]]:
    mailbox.select_folder("Drafts", readonly=True)
    uids = mailbox.search(["NOT", "DELETED"])
    fetched = mailbox.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
    return {
        uid: (email.message_from_bytes(data[b"BODY[]"], policy=email.policy.default), data[b"FLAGS"])
        for uid, data in fetched.items()
    }


@pytest.mark.django_db
def test_a_draft_is_saved_and_each_new_version_replaces_the_old(synced_account, mailbox):
    key = default_store().put(synced_account.tenant_id, b"attached bytes")
    draft = make_draft(synced_account)
    with tenant_scope(draft.tenant_id):
        DraftAttachment.objects.create(
            tenant_id=draft.tenant_id,
            draft=draft,
            filename="Überblick.txt",
            content_type="text/plain",
            size_bytes=14,
            blob_key=key,
        )

    assert sync_copy(draft) == "saved"

    [(uid, (copy, flags))] = drafts_on_server(mailbox).items()
    assert copy["Subject"] == "Plans für Montag"
    assert copy["Message-ID"] == draft_message_id(draft)
    assert set(flags) >= {b"\\Draft", b"\\Seen"}
    assert [part.get_filename() for part in copy.iter_attachments()] == ["Überblick.txt"]
    saved = reload(draft)
    assert (saved.server_uid, saved.server_version, saved.server_error) == (uid, 1, "")
    with tenant_scope(draft.tenant_id):
        assert Folder.objects.get(id=saved.server_folder_id).type == "drafts" and saved.server_uidvalidity

    # Nothing changed: nothing written.
    assert sync_copy(draft) == "saved"
    assert list(drafts_on_server(mailbox)) == [uid]

    edit(draft, text_body="Second version\r\n", subject="Plans für Dienstag")
    assert sync_copy(draft) == "saved"

    [(new_uid, (copy, _))] = drafts_on_server(mailbox).items()
    assert new_uid != uid and copy["Subject"] == "Plans für Dienstag"
    assert "Second version" in copy.get_body(("plain",)).get_content()
    saved = reload(draft)
    assert (saved.server_uid, saved.server_version) == (new_uid, 2)


@pytest.mark.django_db
def test_a_deleted_draft_leaves_the_server_and_then_the_database(synced_account, mailbox):
    draft = make_draft(synced_account)
    sync_copy(draft)
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(is_deleted=True)

    assert sync_copy(draft) == "deleted"

    assert drafts_on_server(mailbox) == {}
    with tenant_scope(draft.tenant_id):
        assert not Draft.objects.filter(id=draft.id).exists()
    assert sync_copy(draft) == "missing"  # the task again


@pytest.mark.django_db
def test_a_sent_draft_leaves_the_drafts_folder_and_a_queued_one_keeps_its_copy(synced_account, mailbox):
    draft = make_draft(synced_account)
    sync_copy(draft)
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(status=Status.QUEUED)
    assert sync_copy(draft) == "kept"
    assert len(drafts_on_server(mailbox)) == 1

    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(status=Status.SENT)
    assert sync_copy(draft) == "removed"

    assert drafts_on_server(mailbox) == {}
    saved = reload(draft)
    assert saved.server_uid is None and saved.status == Status.SENT


@pytest.mark.django_db
def test_a_copy_left_by_a_crash_is_removed_by_the_next_run(synced_account, mailbox, monkeypatch):
    draft = make_draft(synced_account)

    # The APPEND went through; the worker died before the UID was recorded.
    def crash(*args, **kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(drafts_folder, "_server_fields", crash)
    with pytest.raises(SystemExit):
        sync_copy(draft)
    monkeypatch.undo()
    assert len(drafts_on_server(mailbox)) == 1 and reload(draft).server_uid is None

    edit(draft, subject="After the crash")
    assert sync_copy(draft) == "saved"

    [(uid, (copy, _))] = drafts_on_server(mailbox).items()
    assert copy["Subject"] == "After the crash" and reload(draft).server_uid == uid


@pytest.mark.django_db
def test_a_draft_sent_while_its_copy_was_appended_leaves_no_copy(synced_account, mailbox, monkeypatch):
    draft = make_draft(synced_account)
    build = drafts_folder._draft_bytes

    def sent_meanwhile(row, message_id):
        data = build(row, message_id)
        with tenant_scope(row.tenant_id):
            Draft.objects.filter(id=row.id).update(status=Status.SENT)
        return data

    monkeypatch.setattr(drafts_folder, "_draft_bytes", sent_meanwhile)

    assert sync_copy(draft) == "removed"
    assert drafts_on_server(mailbox) == {}


@pytest.mark.django_db
def test_without_uidplus_the_new_copy_is_found_by_its_message_id(synced_account, mailbox, monkeypatch):
    draft = make_draft(synced_account)
    monkeypatch.setattr(drafts_folder, "_appended_uid", lambda response, uidvalidity: None)

    assert sync_copy(draft) == "saved"
    edit(draft, subject="v2")
    assert sync_copy(draft) == "saved"

    [(uid, (copy, _))] = drafts_on_server(mailbox).items()
    assert copy["Subject"] == "v2" and reload(draft).server_uid == uid


@pytest.mark.django_db
def test_an_account_never_synced_has_no_drafts_folder_yet(smtp_account, mailbox):
    draft = make_draft(smtp_account)

    assert sync_copy(draft) == "no_folder"

    assert "no Drafts folder" in reload(draft).server_error
    assert drafts_on_server(mailbox) == {}


@pytest.mark.django_db
def test_a_running_sync_makes_it_wait(synced_account, mailbox):
    draft = make_draft(synced_account)
    other = connections.create_connection("default")
    try:
        # Another session (a sync) holds the account.
        with other.cursor() as cursor:
            key = int.from_bytes(synced_account.id.bytes[:8], "big", signed=True)
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        with pytest.raises(SyncAlreadyRunning):
            sync_copy(draft)
    finally:
        with other.cursor() as cursor:  # now, not when the server notices the close
            cursor.execute("SELECT pg_advisory_unlock_all()")
        other.close()
    assert drafts_on_server(mailbox) == {}
    with account_sync_lock(synced_account.id):  # released with its session
        pass
    assert sync_copy(draft) == "saved"


@pytest.mark.django_db
def test_a_server_error_is_recorded_and_raised_for_a_retry(synced_account, smtp_server):
    draft = make_draft(synced_account)
    with tenant_scope(synced_account.tenant_id):
        synced_account.port = smtp_server.port("plain")  # not an IMAP server
        synced_account.encryption = "none"
        synced_account.save(update_fields=["port", "encryption"])

    with pytest.raises(MailServerError):
        sync_copy(draft)

    assert reload(draft).server_error.startswith("The Drafts copy could not be saved")


@pytest.mark.django_db
def test_the_task_retries_while_a_sync_runs_then_gives_up(synced_account, monkeypatch):
    from compose.tasks import save_draft_copy_task

    draft = make_draft(synced_account)
    monkeypatch.setattr("compose.tasks.DRAFT_COPY_BUSY_RETRIES", 2)
    calls = []
    real = drafts_folder.draft_copy_sync

    def counted(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr("compose.tasks.draft_copy_sync", counted)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            key = int.from_bytes(synced_account.id.bytes[:8], "big", signed=True)
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        # Eagerly applied, a retry runs again at once.
        result = save_draft_copy_task.apply(
            kwargs={"tenant_id": str(draft.tenant_id), "draft_id": str(draft.id)}
        )
    finally:
        with other.cursor() as cursor:  # now, not when the server notices the close
            cursor.execute("SELECT pg_advisory_unlock_all()")
        other.close()
    assert result.get() == {"result": "busy"}
    assert len(calls) == 3
    assert save_draft_copy_task.apply(
        kwargs={"tenant_id": str(draft.tenant_id), "draft_id": str(draft.id)}
    ).get() == {"result": "saved"}


def _deactivate_tenant(account) -> str:
    Tenant.objects.filter(id=account.tenant_id).update(is_active=False)
    return "tenant is deactivated"


def _remove_member(account) -> str:
    with tenant_scope(account.tenant_id):
        TenantMembership.objects.filter(tenant_id=account.tenant_id, user_id=account.user_id).delete()
    return "no longer an active member"


def _deactivate_owner(account) -> str:
    get_user_model().objects.filter(id=account.user_id).update(is_active=False)
    return "no longer an active member"


@pytest.mark.django_db
@pytest.mark.parametrize("cut_off", [_deactivate_tenant, _remove_member, _deactivate_owner])
def test_no_login_for_a_deactivated_tenant_or_a_removed_owner(synced_account, mailbox, cut_off):
    from compose.tasks import save_draft_copy_task

    draft = make_draft(synced_account)
    reason = cut_off(synced_account)

    result = save_draft_copy_task.apply(
        kwargs={"tenant_id": str(draft.tenant_id), "draft_id": str(draft.id)}
    ).get()

    assert result == {"result": "refused"}
    assert drafts_on_server(mailbox) == {}  # the stored credentials were not used
    error = reload(draft).server_error
    assert error.startswith("The Drafts copy could not be saved") and reason in error
