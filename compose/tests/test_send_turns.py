"""A tenant's share of the workers for sending (`outbox_send_in_turn`): at
most its `max_concurrent_sends` runs at once across the workers. A run
without a free slot never waits on its worker: it comes back later, or
leaves its draft to the account's drain, and another tenant's sends go on.
Against the real Redis, PostgreSQL and SMTP sink."""

import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from accounts.tests.factories import EmailAccountFactory
from compose.models import Status
from compose.outbox import WAITING, _drain_mark, _helper_mark, outbox_send_in_turn, send_request
from compose.tasks import send_task
from compose.tests.conftest import SMTP_PASSWORD, SMTP_USER, broker_sends
from compose.tests.test_outbox import queue_message, state
from emailclient.core.cache import redis_client
from emailclient.core.crypto import encrypt_secret
from emailclient.core.models import Tenant
from emailclient.core.semaphores import (
    semaphore_key,
    semaphores_acquire,
    semaphores_in_use,
    semaphores_release,
)
from emailclient.core.tests.celery_worker import CeleryWorker
from emailclient.core.tests.factories import MembershipFactory, UserFactory
from mailboxes.tests.tarpit import Tarpit


def sends_queued(broker) -> list[tuple[dict, dict]]:
    """compose.tasks.send messages on the broker: (kwargs, headers)."""
    return [({k: v for k, v in kwargs.items() if k != "args"}, headers) for kwargs, headers in broker_sends()]


def slots_key(tenant) -> str:
    return semaphore_key(f"compose:sends:tenant:{tenant.id}")


@pytest.fixture
def tenant_a_busy(tenant_a):
    """Tenant A may send in one run at once, and another worker runs it."""
    tenant_a.max_concurrent_sends = 1
    tenant_a.save(update_fields=["max_concurrent_sends"])
    keys = [slots_key(tenant_a)]
    assert semaphores_acquire(keys=keys, limits=[1], holder="another-run", lease=30) == 0
    yield keys
    semaphores_release(keys=keys, holder="another-run")


@pytest.fixture
def account_b(smtp_server, tenant_b, user_b):
    return EmailAccountFactory(
        tenant=tenant_b,
        user=user_b,
        email_address="bob@b.example",
        hostname="127.0.0.1",
        smtp_hostname="127.0.0.1",
        smtp_port=smtp_server.port("starttls"),
        smtp_encryption="starttls",
        smtp_username=SMTP_USER,
        smtp_password_encrypted=encrypt_secret(SMTP_PASSWORD),
        save_sent_copy=False,
    )


def run(draft, **kwargs) -> str:
    return outbox_send_in_turn(tenant_id=draft.tenant_id, draft_id=draft.id, **kwargs)


@pytest.mark.django_db
def test_a_drain_run_without_a_slot_comes_back_later_with_its_mark(
    smtp_account, smtp_server, broker, tenant_a_busy
):
    draft = queue_message(smtp_account)
    cache.set(_drain_mark(smtp_account.id), "token-1", 30)

    outcome = run(draft, account_id=smtp_account.id, drain="token-1")

    assert outcome == WAITING
    assert smtp_server.deliveries == []
    assert state(draft)[0].status == Status.QUEUED
    [(kwargs, headers)] = sends_queued(broker)
    assert kwargs == {
        "tenant_id": str(smtp_account.tenant_id),
        "draft_id": str(draft.id),
        "account_id": str(smtp_account.id),
        "drain": "token-1",
    }
    assert headers["eta"] is not None  # later, not at once
    # The mark stays the run's, renewed: no other main run is queued meanwhile.
    assert cache.get(_drain_mark(smtp_account.id)) == "token-1"
    assert redis_client().ttl(cache.make_key(_drain_mark(smtp_account.id))) > 60


@pytest.mark.django_db
def test_a_run_of_its_own_without_a_slot_leaves_its_draft_to_the_accounts_drain(
    smtp_account, smtp_server, broker, tenant_a_busy
):
    drafts = [queue_message(smtp_account, subject=f"n{n}") for n in range(3)]

    outcomes = [run(draft, account_id=smtp_account.id) for draft in drafts]

    assert outcomes == [WAITING] * 3
    assert smtp_server.deliveries == []
    # One task drains the account (the first draft's), holding its mark; the
    # other two drafts found the mark and queued nothing.
    [(kwargs, _)] = sends_queued(broker)
    assert kwargs["draft_id"] == str(drafts[0].id)
    assert kwargs["drain"] == cache.get(_drain_mark(smtp_account.id))


@pytest.mark.django_db
def test_a_retry_without_its_account_named_is_left_to_the_accounts_drain_too(
    smtp_account, smtp_server, broker, tenant_a_busy
):
    drafts = [queue_message(smtp_account, subject=f"n{n}") for n in range(2)]

    assert [run(draft) for draft in drafts] == [WAITING, WAITING]  # no account_id, as a retry's task

    [(kwargs, _)] = sends_queued(broker)
    assert (kwargs["draft_id"], kwargs["account_id"]) == (str(drafts[0].id), str(smtp_account.id))
    assert kwargs["drain"] == cache.get(_drain_mark(smtp_account.id))


@pytest.mark.django_db
@pytest.mark.parametrize("status", [Status.SENDING, Status.SENT])
def test_a_send_a_dead_worker_left_is_left_to_the_dispatchers_sweep(
    smtp_account, smtp_server, broker, tenant_a_busy, status
):
    """The drain sends due items only, so a `sending` item (its worker died)
    or a `sent` one without its Sent copy is not folded into it; nor does it
    come back on its own: the dispatcher queues such items once every five
    minutes, so waiting tasks do not pile up while the slots stay taken."""
    draft = queue_message(smtp_account, status=status)
    cache.set(_drain_mark(smtp_account.id), "someone-elses", 30)

    # `sending` waits for the sweep; `sent` is what the run has to say of it.
    assert run(draft, account_id=smtp_account.id) == (WAITING if status == Status.SENDING else Status.SENT)

    assert sends_queued(broker) == []
    assert smtp_server.deliveries == []


@pytest.mark.django_db
def test_a_draft_not_due_yet_comes_back_later(smtp_account, broker, tenant_a_busy):
    draft = queue_message(
        smtp_account, status=Status.SCHEDULED, send_at=timezone.now() + timedelta(minutes=5)
    )

    assert run(draft, account_id=smtp_account.id) == WAITING

    [(kwargs, headers)] = sends_queued(broker)
    assert kwargs["draft_id"] == str(draft.id) and headers["eta"] is not None


@pytest.mark.django_db
def test_a_drain_run_whose_mark_expired_takes_it_again_and_one_replaced_ends(
    smtp_account, broker, tenant_a_busy
):
    draft = queue_message(smtp_account)
    mark = _drain_mark(smtp_account.id)

    assert run(draft, account_id=smtp_account.id, drain="token-1") == WAITING  # no mark: expired
    assert cache.get(mark) == "token-1"
    assert len(sends_queued(broker)) == 1

    broker.delete("celery")
    cache.set(mark, "token-2", 30)  # a newer run's
    assert run(draft, account_id=smtp_account.id, drain="token-1") == WAITING
    assert sends_queued(broker) == []
    assert cache.get(mark) == "token-2"


@pytest.mark.django_db
def test_a_cancelled_draft_waits_for_nothing(smtp_account, broker, tenant_a_busy):
    draft = queue_message(smtp_account, status=Status.CANCELLED)

    assert run(draft, account_id=smtp_account.id) == Status.CANCELLED
    assert sends_queued(broker) == []


@pytest.mark.django_db
def test_a_run_gives_its_slot_back_before_it_hands_over(
    smtp_account, smtp_server, broker, tenant_a, monkeypatch
):
    """With one slot, the run it hands over to (queued at its end) finds the
    slot free, instead of waiting 5-10 s for it."""
    from compose import outbox

    tenant_a.max_concurrent_sends = 1
    tenant_a.save(update_fields=["max_concurrent_sends"])
    monkeypatch.setattr(outbox, "DRAIN_BATCH", 2)
    monkeypatch.setattr(outbox, "DRAIN_LIMIT", 2)
    monkeypatch.setattr(outbox, "DRAIN_HELPERS", 0)
    in_use_when_queued = []
    enqueue = outbox.send_enqueue

    def observed(**kwargs):
        in_use_when_queued.append(semaphores_in_use(keys=[slots_key(tenant_a)])[0])
        return enqueue(**kwargs)

    monkeypatch.setattr(outbox, "send_enqueue", observed)
    drafts = [queue_message(smtp_account, subject=f"n{n}") for n in range(4)]
    cache.set(_drain_mark(smtp_account.id), "token-1", 30)

    assert run(drafts[0], account_id=smtp_account.id, drain="token-1") == Status.SENT
    [(successor, _)] = sends_queued(broker)
    assert in_use_when_queued == [0]
    assert send_task.apply(kwargs=successor).get() == {"result": Status.SENT}

    assert len(smtp_server.deliveries) == 4


@pytest.mark.django_db
def test_a_helper_without_a_slot_ends_and_frees_its_helper_slot(smtp_account, broker, tenant_a_busy):
    draft = queue_message(smtp_account)
    cache.set(_helper_mark(smtp_account.id, 0), 1, 30)

    assert run(draft, account_id=smtp_account.id, helper=0) == WAITING

    assert sends_queued(broker) == []
    assert cache.get(_helper_mark(smtp_account.id, 0)) is None


@pytest.mark.django_db
def test_another_tenants_sends_go_on_and_a_freed_slot_is_taken(
    smtp_account, account_b, smtp_server, tenant_a, tenant_a_busy, broker
):
    Tenant.objects.filter(id=account_b.tenant_id).update(
        max_concurrent_sends=1
    )  # one key shared: B would wait
    waiting = queue_message(smtp_account, subject="from A")
    other = queue_message(account_b, subject="from B")

    assert run(other, account_id=account_b.id) == Status.SENT
    assert run(waiting, account_id=smtp_account.id) == WAITING
    semaphores_release(keys=tenant_a_busy, holder="another-run")
    assert run(waiting, account_id=smtp_account.id) == Status.SENT

    assert [d.data.split(b"Subject: ")[1].split(b"\r\n")[0] for d in smtp_server.deliveries] == [
        b"from B",
        b"from A",
    ]
    # Each run gave its slot back.
    assert semaphores_in_use(keys=[slots_key(tenant_a), slots_key(account_b.tenant)]) == [0, 0]


# --- Through a real worker -------------------------------------------------------------


@pytest.fixture
def worker(tmp_path, mail_settings, broker):
    overrides = {
        "BLOB_STORAGE_DIR": str(mail_settings.BLOB_STORAGE_DIR),
        "MAIL_TLS_CA_FILE": str(mail_settings.MAIL_TLS_CA_FILE),
        "SMTP_CONNECTION_DEADLINE": 3.0,
        "SEND_SLOT_WAIT_SECONDS": 0.3,
        "COMPOSE_SEND_MAX_ATTEMPTS": 1,  # a run at the deadline fails the item: nothing retried meanwhile
    }
    started = CeleryWorker(tmp_path, "send-turns", overrides, concurrency=2, redeliver_after=None)
    started.wait_ready()
    yield started.output
    started.kill()


def test_a_tarpit_tenant_does_not_hold_up_another_tenants_sends(
    committed_db, smtp_server, tenant_a, account_b, worker
):
    """Tenant A's three accounts send through an SMTP server that trickles
    its greeting (each run holds its worker to the 3 s connection deadline);
    their sends are queued before tenant B's. Two workers, A's share one:
    B's message goes at once, A's runs one after another. Without the share,
    B waited for a worker until A's first deadline."""
    Tenant.objects.filter(id=tenant_a.id).update(max_concurrent_sends=1)
    tarpit = Tarpit(mode="greeting", interval=0.2, give_up_after=30)
    slow = []
    for n in range(3):
        user = UserFactory(username=f"tarpit-sender-{n}")
        MembershipFactory(tenant=tenant_a, user=user)
        slow.append(
            EmailAccountFactory(
                tenant=tenant_a,
                user=user,
                email_address=f"slow{n}@a.example",
                hostname="127.0.0.1",
                smtp_hostname="127.0.0.1",
                smtp_port=tarpit.port,
                smtp_encryption="starttls",
                smtp_username=SMTP_USER,
                smtp_password_encrypted=encrypt_secret(SMTP_PASSWORD),
            )
        )
    waiting = [queue_message(account) for account in slow]
    other = queue_message(account_b)

    started = time.monotonic()
    for draft in [*waiting, other]:
        send_request(tenant_id=draft.tenant_id, draft_id=draft.id, account_id=draft.account_id)
    other_sent_at = None
    while time.monotonic() < started + 60:
        if other_sent_at is None and state(other)[0].status == Status.SENT:
            other_sent_at = time.monotonic() - started
        tried = [state(d) for d in waiting]
        if other_sent_at is not None and all(d.status == Status.FAILED for d, _ in tried):
            break
        time.sleep(0.05)
    waited_out_at = time.monotonic() - started
    tarpit.close()

    assert other_sent_at is not None and other_sent_at < 2.0, (other_sent_at, worker())
    assert len(smtp_server.deliveries) == 1
    for draft in waiting:  # each tried once, stopped at the deadline
        fresh, item = state(draft)
        assert (fresh.status, item.attempts) == (Status.FAILED, 1), (fresh.status, item.error, worker())
        assert "SMTP_CONNECTION_DEADLINE" in item.error
    assert waited_out_at >= 3 * 3  # never two of A's runs at once
    assert tarpit.connections == 3
