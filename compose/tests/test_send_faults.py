"""Exactly once when workers die or race: a real Celery worker killed mid-send
and the task redelivered to another, and one task run twice at once. Each
counts the deliveries at the SMTP server (the aiosmtpd sink counts a message
once it has received it whole, replied to or not)."""

import contextlib
import email
import socket
import threading
import time

import pytest
import redis
from django.conf import settings
from django.db import connection

from compose.models import Status
from compose.outbox import _send_locks_held, outbox_send, send_enqueue
from compose.tests.test_outbox import audit_actions, queue_message, state
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.celery_worker import CeleryWorker

# --- A real worker --------------------------------------------------------------------

# The worker runs the test settings with this test's blob store and CA, and
# a broker visibility timeout of seconds instead of an hour, so that a
# message taken by a worker that was killed is handed to the next one soon.
Worker = CeleryWorker


@pytest.fixture
def workers(tmp_path, mail_settings, broker):
    started: list[Worker] = []
    overrides = {
        "BLOB_STORAGE_DIR": str(mail_settings.BLOB_STORAGE_DIR),
        "MAIL_TLS_CA_FILE": str(mail_settings.MAIL_TLS_CA_FILE),
    }

    def start() -> Worker:
        worker = Worker(tmp_path, f"outbox-test-{len(started) + 1}", overrides)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def broker():
    """The test broker, empty: no message of another test for our workers."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def wait_for(condition, timeout: float, what: str, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(
        f"timed out waiting for {what}" + (f"; worker said:\n{worker.output()}" if worker else "")
    )


def phase(draft) -> str:
    return state(draft)[1].phase


def lock_free(draft) -> bool:
    return not _send_locks_held([draft.id])


class StallingProxy:
    """Forwards SMTP connections to the sink in clear; the first one is held
    at the DATA command (the server never sees it), so its client waits
    with the envelope given and no byte of the body sent."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(client, server, self.connections == 1), daemon=True
            ).start()

    def _pump(self, source, sink, stall_at_data: bool) -> None:
        seen = b""
        try:
            while data := source.recv(65536):
                seen = (seen + data)[-64:]
                if stall_at_data and (seen.endswith(b"\r\nDATA\r\n") or seen == b"DATA\r\n"):
                    self.stalled.set()
                    while source.recv(65536):  # swallow; forward nothing more
                        pass
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_worker_killed_after_the_body_went_then_redelivered(committed_db, smtp_account, smtp_server, workers):
    smtp_server.hang(20)  # the body is received; the final reply never comes
    draft = queue_message(smtp_account)
    first = workers()
    send_enqueue(tenant_id=draft.tenant_id, draft_id=draft.id)

    wait_for(lambda: len(smtp_server.deliveries) == 1, 60, "the body at the server", first)
    assert phase(draft) == "data" and state(draft)[0].status == Status.SENDING
    first.kill()
    wait_for(lambda: lock_free(draft), 10, "the dead worker's send lock to go")

    # The broker hands the unacknowledged task to the next worker.
    second = workers()
    wait_for(lambda: state(draft)[0].status != Status.SENDING, 60, "the redelivered task", second)

    fresh, item = state(draft)
    assert fresh.status == Status.UNCERTAIN, second.output()
    assert item.attempts == 1
    assert len(smtp_server.deliveries) == 1
    assert audit_actions(draft) == ["compose.send.uncertain"]
    # Neither the task again nor the dispatcher sends it.
    assert outbox_send(tenant_id=draft.tenant_id, draft_id=draft.id) == Status.UNCERTAIN
    assert len(smtp_server.deliveries) == 1


def test_worker_killed_before_the_body_went_then_redelivered(
    committed_db, smtp_account, smtp_server, workers
):
    proxy = StallingProxy(smtp_server.port("plain"))
    with tenant_scope(smtp_account.tenant_id):
        smtp_account.smtp_port, smtp_account.smtp_encryption = proxy.port, "none"
        smtp_account.save(update_fields=["smtp_port", "smtp_encryption"])
    draft = queue_message(smtp_account)
    first = workers()
    send_enqueue(tenant_id=draft.tenant_id, draft_id=draft.id)

    wait_for(proxy.stalled.is_set, 60, "the DATA command", first)
    assert phase(draft) == "connect"  # the claim's: only "data" is recorded on the way
    first.kill()
    wait_for(lambda: lock_free(draft), 10, "the dead worker's send lock to go")
    assert smtp_server.deliveries == []

    second = workers()
    wait_for(lambda: state(draft)[0].status == Status.SENT, 60, "the redelivered task to send", second)
    proxy.close()

    _, item = state(draft)
    assert item.attempts == 2 and item.phase == "done"
    assert len(smtp_server.deliveries) == 1
    assert audit_actions(draft) == ["compose.send.sent"]


def test_one_task_run_twice_at_once_delivers_once(committed_db, smtp_account, smtp_server):
    smtp_server.hang(1.5)  # the first holds the send while the second arrives
    draft = queue_message(smtp_account)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def run() -> None:
        try:
            start.wait()
            outcomes.append(outbox_send(tenant_id=draft.tenant_id, draft_id=draft.id))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(outcomes) == ["busy", Status.SENT]
    assert len(smtp_server.deliveries) == 1
    _, item = state(draft)
    assert item.attempts == 1
    # And once more after it is done, as a late redelivery would.
    assert outbox_send(tenant_id=draft.tenant_id, draft_id=draft.id) == Status.SENT
    assert len(smtp_server.deliveries) == 1


def test_many_deliveries_of_one_task_at_once_deliver_once(committed_db, smtp_account, smtp_server):
    """Without a hang: whoever comes second finds the lock taken or the
    item sent, never a second send."""
    drafts = [queue_message(smtp_account) for _ in range(5)]
    outcomes: dict[str, list[str]] = {str(d.id): [] for d in drafts}
    start = threading.Barrier(4)

    def run() -> None:
        try:
            start.wait()
            for draft in drafts:
                outcomes[str(draft.id)].append(outbox_send(tenant_id=draft.tenant_id, draft_id=draft.id))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert len(smtp_server.deliveries) == 5
    ids = {email.message_from_bytes(d.data)["Message-ID"] for d in smtp_server.deliveries}
    assert ids == {d.message_id for d in drafts}
    for draft in drafts:
        assert outcomes[str(draft.id)].count(Status.SENT) >= 1
        assert set(outcomes[str(draft.id)]) <= {Status.SENT, "busy"}
        assert state(draft)[1].attempts == 1
