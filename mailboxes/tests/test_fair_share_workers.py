"""One tenant must not starve the others, through real Celery workers: tenant
A's accounts point at a tarpit (it logs anyone in, then answers a byte at a
time), tenant B's at the real Dovecot. B's syncs finish in seconds while A's
fail at the sync deadline, one at a time (A's cap of concurrent syncs is 1),
the others waiting off the workers.

Short deadlines keep it short: SYNC_DEADLINE 3 s in the worker. It is the
one test here that proves a time bound (about 20 s, most of it the worker's
start and A's three deadlines)."""

import os
import time

import pytest
import redis
from django.conf import settings

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import Tenant
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.celery_worker import CeleryWorker
from emailclient.core.tests.factories import MembershipFactory, UserFactory
from mailboxes import sync_status
from mailboxes.services import sync_request
from mailboxes.tests.conftest import PASSWORD, imap
from mailboxes.tests.tarpit import Tarpit
from mailboxes.tests.test_imap_sync import seed
from messages.models import Message
from messages.tests.corpus import corpus_files


@pytest.fixture
def broker():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def worker(tmp_path, mail_settings, broker):
    overrides = {
        "BLOB_STORAGE_DIR": str(mail_settings.BLOB_STORAGE_DIR),
        "MAIL_TLS_CA_FILE": str(mail_settings.MAIL_TLS_CA_FILE),
        "SYNC_DEADLINE": 3.0,
        "MAIL_CONNECTION_DEADLINE": 2.0,
        "SYNC_SLOT_WAIT_SECONDS": 0.3,
        "SYNC_MAX_CONCURRENT_PER_HOST": 8,  # every server here is 127.0.0.1
    }
    started = CeleryWorker(tmp_path, "fair-share-test", overrides, concurrency=2, redeliver_after=None)
    started.wait_ready()
    yield started.output
    started.kill()


def _account_of(tenant, **kw):
    user = UserFactory()
    MembershipFactory(tenant=tenant, user=user)
    return EmailAccountFactory(tenant=tenant, user=user, hostname="127.0.0.1", **kw)


def _reload(account):
    with tenant_scope(account.tenant_id):
        return type(account).objects.get(id=account.id)


def _stored(account) -> int:
    with tenant_scope(account.tenant_id):
        return Message.objects.filter(account=account).count()


def test_a_tarpit_tenant_does_not_hold_up_another_tenants_syncs(
    committed_db, devmail, tenant_a, tenant_b, worker
):
    Tenant.objects.filter(id=tenant_a.id).update(max_concurrent_syncs=1)
    tarpit = Tarpit(mode="after_login", interval=0.2, give_up_after=60)
    slow = [_account_of(tenant_a, port=tarpit.port, encryption="none") for _ in range(3)]
    fast, seeded = [], []
    for n in range(2):
        name = f"fairshare{n}-{os.getpid()}"
        devmail.add_user(name, PASSWORD)
        client = imap(devmail, name)
        seeded.append(seed(client, {"INBOX": corpus_files("notmuch", "threading")[: 3 + n]}))
        client.logout()
        fast.append(_account_of(tenant_b, port=devmail.imap_port, encryption="starttls", username=name))

    # A's backlog first, in front of B's in the queue.
    started = time.monotonic()
    for account in slow + fast:
        sync_request(account=account)

    states_seen: dict[str, set] = {str(a.id): set() for a in slow}
    fast_done_at = None
    deadline = started + 60
    while time.monotonic() < deadline:
        for account in slow:
            states_seen[str(account.id)].add(sync_status.sync_status_get(account.id)["state"])
        if fast_done_at is None and all(_reload(a).last_sync_at for a in fast):
            fast_done_at = time.monotonic() - started
        if fast_done_at is not None and all(
            sync_status.sync_status_get(a.id)["state"] == sync_status.FAILED for a in slow
        ):
            break
        time.sleep(0.05)
    slow_done_at = time.monotonic() - started
    tarpit.close()

    # B: synced in full, on time: long before A's first deadline (3 s) had passed
    # twice, though A's three syncs were queued first.
    assert fast_done_at is not None, worker()
    assert fast_done_at < 6, (fast_done_at, worker())
    assert [_stored(a) for a in fast] == seeded
    assert all(_reload(a).last_sync_error == "" for a in fast)
    # A: each failed at the deadline, with a state that says so, one at a time.
    for account in slow:
        status = sync_status.sync_status_get(account.id)
        assert status["state"] == sync_status.FAILED, (status, worker())
        assert "SYNC_DEADLINE" in _reload(account).last_sync_error
    assert slow_done_at >= 3 * 3  # never two of A's syncs at once: cap 1, deadline 3 s each
    assert any(sync_status.WAITING in seen for seen in states_seen.values()), states_seen
    assert tarpit.connections == 3
