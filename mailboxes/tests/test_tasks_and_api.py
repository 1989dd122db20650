"""The sync task, its API, its periodic schedule and `manage.py sync`,
with the real Redis (broker and status) and Dovecot."""

import base64
import json

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask

from accounts.tests.factories import EmailAccountFactory
from conftest import bearer_client
from emailclient.core.crypto import encrypt_secret
from emailclient.core.tenancy import tenant_scope
from mailboxes import sync_status
from mailboxes.tasks import sync_account_task
from mailboxes.tests.helpers import assert_in_step
from mailboxes.tests.test_imap_sync import seed
from messages.tests.corpus import corpus_files


def reload(account):
    with tenant_scope(account.tenant_id):
        return type(account).objects.get(id=account.id)


def run_task(account, task_id=None):
    kwargs = {"tenant_id": str(account.tenant_id), "account_id": str(account.id)}
    return sync_account_task.apply(kwargs=kwargs, task_id=task_id).get()


@pytest.mark.django_db
def test_task_syncs_and_records_success(imap_account, mailbox):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")})
    result = run_task(imap_account)
    assert result["result"] == "ok"
    account = reload(imap_account)
    assert account.last_sync_at is not None and not account.is_syncing and account.last_sync_error == ""
    assert sync_status.sync_status_get(account.id)["state"] == sync_status.IDLE
    assert_in_step(mailbox, imap_account)


@pytest.mark.django_db
def test_authentication_failure_marks_the_account_and_stops(imap_account):
    with tenant_scope(imap_account.tenant_id):
        imap_account.password_encrypted = encrypt_secret("wrong")
        imap_account.save()
    result = run_task(imap_account)
    assert result["result"] == "failed"
    account = reload(imap_account)
    assert "refused the login" in account.last_sync_error
    assert account.last_sync_at is None
    assert sync_status.sync_status_get(account.id)["state"] == sync_status.FAILED
    assert "wrong" not in json.dumps(sync_status.sync_status_get(account.id))


@pytest.mark.django_db
def test_network_errors_are_retried_then_fail(imap_account, settings):
    settings.SYNC_MAX_RETRIES = 2
    with tenant_scope(imap_account.tenant_id):
        imap_account.port = 1  # nothing listens there
        imap_account.save()
    attempts = []
    original = sync_account_task.retry

    def counting_retry(*args, **kwargs):
        attempts.append(kwargs.get("countdown"))
        return original(*args, **kwargs)

    sync_account_task.retry = counting_retry
    try:
        outcome = sync_account_task.apply(
            kwargs={"tenant_id": str(imap_account.tenant_id), "account_id": str(imap_account.id)}
        )
    finally:
        del sync_account_task.retry
    assert len(attempts) == 2
    assert all(15 <= c <= 180 for c in attempts), attempts  # backoff with jitter
    assert outcome.result["result"] == "failed"  # the retries ran (eagerly), the last one gave up
    assert sync_status.sync_status_get(imap_account.id)["state"] == sync_status.FAILED
    assert "cannot connect" in reload(imap_account).last_sync_error


@pytest.mark.django_db
def test_missing_account_is_logged_and_skipped(tenant_a):
    import uuid

    result = sync_account_task.apply(
        kwargs={"tenant_id": str(tenant_a.id), "account_id": str(uuid.uuid4())}
    ).get()
    assert result == {"result": "missing"}


# --- API ---------------------------------------------------------------------------


def _broker_messages() -> list[dict]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [json.loads(raw) for raw in client.lrange("celery", 0, -1)]


@pytest.mark.django_db
def test_trigger_queues_once_and_joins(client_a, imap_account, mailbox):
    url = f"/api/sync/imap/{imap_account.id}"
    first = client_a.post(url)
    assert first.status_code == 202
    assert first.json()["state"] == "queued" and first.json()["joined"] is False
    second = client_a.post(url)
    assert second.status_code == 202
    assert second.json() == {**first.json(), "joined": True}

    # One message on the real broker, with ids only: no credential in it.
    queued = _broker_messages()
    assert len(queued) == 1
    assert queued[0]["headers"]["id"] == first.json()["task_id"]
    args, kwargs, _ = json.loads(base64.b64decode(queued[0]["body"]))
    assert args == [] and set(kwargs) == {"tenant_id", "account_id"}
    assert "mail-password" not in json.dumps(queued)

    status_url = f"/api/sync/status/{imap_account.id}"
    assert client_a.get(status_url).json()["state"] == "queued"

    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:3]})
    run_task(imap_account, task_id=first.json()["task_id"])  # what the worker does
    body = client_a.get(status_url).json()
    assert body["state"] == "idle" and body["last_sync_at"] and body["last_error"] == ""
    assert body["account_id"] == str(imap_account.id)
    # Finished: the next trigger queues a new sync.
    assert client_a.post(url).json()["joined"] is False


@pytest.mark.django_db
def test_seed_path_sync_alias(user_a, tenant_a, imap_account):
    response = bearer_client(user_a).post(
        f"/api/v1/{tenant_a.slug}/email_client/accounts/{imap_account.id}/sync/"
    )
    assert response.status_code == 202


@pytest.mark.django_db
def test_sync_endpoints_hide_other_tenants_accounts(client_b, client_a, tenant_b, imap_account):
    for method, url in (
        ("post", f"/api/sync/imap/{imap_account.id}"),
        ("get", f"/api/sync/status/{imap_account.id}"),
    ):
        assert getattr(client_b, method)(url).status_code == 404
    client_a.credentials(
        HTTP_AUTHORIZATION=client_a._credentials["HTTP_AUTHORIZATION"], HTTP_X_TENANT_ID=tenant_b.slug
    )
    assert client_a.post(f"/api/sync/imap/{imap_account.id}").status_code == 404
    assert _broker_messages() == []


# --- Periodic schedule -------------------------------------------------------------


@pytest.mark.django_db
def test_each_account_gets_a_periodic_sync_that_follows_it(client_a):
    created = client_a.post(
        "/api/accounts/",
        {
            "account_name": "W",
            "email_address": "w@example.com",
            "protocol": "imap",
            "hostname": "imap.example.com",
            "password": "pw",
            "sync_interval": 600,
        },
        format="json",
    ).json()
    task = PeriodicTask.objects.get(name=f"sync-account-{created['id']}")
    assert task.task == "mailboxes.tasks.sync_account" and task.enabled
    assert task.interval.every == 600 and task.interval.period == "seconds"
    assert json.loads(task.kwargs) == {"tenant_id": _tenant_id(client_a), "account_id": created["id"]}

    client_a.patch(f"/api/accounts/{created['id']}/", {"sync_interval": 120}, format="json")
    assert PeriodicTask.objects.get(name=f"sync-account-{created['id']}").interval.every == 120
    client_a.patch(f"/api/accounts/{created['id']}/", {"is_sync_enabled": False}, format="json")
    assert not PeriodicTask.objects.filter(name=f"sync-account-{created['id']}").exists()
    client_a.patch(f"/api/accounts/{created['id']}/", {"is_sync_enabled": True}, format="json")
    assert PeriodicTask.objects.filter(name=f"sync-account-{created['id']}").exists()
    client_a.delete(f"/api/accounts/{created['id']}/")
    assert not PeriodicTask.objects.filter(name=f"sync-account-{created['id']}").exists()


def _tenant_id(client) -> str:
    from emailclient.core.models import Tenant

    return str(Tenant.objects.get(slug=client._credentials["HTTP_X_TENANT_ID"]).id)


# --- manage.py sync ----------------------------------------------------------------


def test_sync_command(committed_db, imap_account, mailbox, tenant_b, user_b, capsys):
    seeded = seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")})
    call_command("sync", "--account", str(imap_account.id))
    out = capsys.readouterr().out
    assert f"{imap_account.email_address}: 6 folders, {seeded} new, 0 flag changes" in out
    assert "Synced 1 of 1 account(s)" in out
    assert_in_step(mailbox, imap_account)

    call_command("sync", "--tenant", imap_account.tenant.slug)
    assert "0 new" in capsys.readouterr().out

    with pytest.raises(CommandError, match="No matching account"):
        call_command("sync", "--tenant", tenant_b.slug)
    broken = EmailAccountFactory(
        tenant=tenant_b, user=user_b, hostname="127.0.0.1", port=1, encryption="none"
    )
    with pytest.raises(CommandError, match="1 account"):
        call_command("sync", "--all")
    assert "cannot connect" in reload(broken).last_sync_error


@pytest.mark.django_db
def test_a_request_that_joins_a_running_sync_may_ask_for_one_more(imap_account, mailbox):
    from mailboxes.services import sync_request

    running = "running-sync"
    assert sync_status.sync_claim(imap_account.id, running) is None
    sync_status.sync_status_set(imap_account.id, state=sync_status.RUNNING, task_id=running)
    assert sync_request(account=imap_account) == (running, True)  # joins; nothing more asked
    assert not sync_status.sync_rerun_take(imap_account.id)
    assert sync_request(account=imap_account, again_if_joined=True) == (running, True)

    assert run_task(imap_account, task_id=running)["result"] == "ok"

    after = sync_status.sync_status_get(imap_account.id)
    assert after["state"] == sync_status.QUEUED and after["task_id"] not in ("", running)
    assert not sync_status.sync_rerun_take(imap_account.id)  # taken by the finished sync
