"""Faults: a killed sync, a connection cut mid-FETCH, a server without
CONDSTORE/QRESYNC. After each, another sync leaves the database equal to
the server: nothing lost, nothing duplicated."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import ImapSession, MailServerError
from mailboxes.sync import account_sync
from mailboxes.tests.conftest import PASSWORD, imap
from mailboxes.tests.helpers import assert_in_step
from mailboxes.tests.test_imap_sync import seed
from messages.models import Message
from messages.tests.corpus import corpus_files


def sync(account):
    return account_sync(tenant_id=account.tenant_id, account_id=account.id)


def stored(account) -> int:
    with tenant_scope(account.tenant_id):
        return Message.objects.filter(account=account).count()


# --- A sync killed mid-batch ---------------------------------------------------------


def test_sync_killed_mid_batch_then_run_again(committed_db, imap_account, mailbox, mail_settings, tmp_path):
    lkml = corpus_files("notmuch", "lkml")
    seed(mailbox, {"INBOX": lkml, "Archive": corpus_files("torture")})
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "emailclient.settings.test",
        "MAIL_TLS_CA_FILE": str(mail_settings.MAIL_TLS_CA_FILE),
        "BLOB_STORAGE_DIR": str(mail_settings.BLOB_STORAGE_DIR),
        "SYNC_BATCH_MESSAGES": "10",
    }
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "sync", "--account", str(imap_account.id)],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Kill it, without warning, once some batches are committed.
    deadline = time.monotonic() + 60
    while stored(imap_account) < 30 and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    partial = stored(imap_account)
    assert 0 < partial < len(lkml), f"the kill must land mid-sync; worker said: {worker.stderr.read()!r}"

    sync(imap_account)

    assert_in_step(mailbox, imap_account)


# --- The connection cut mid-FETCH -----------------------------------------------------


class CuttingProxy:
    """Forwards one TCP connection to the mail server and drops it after
    `cut_after` bytes have come back from the server."""

    def __init__(self, target_port: int, cut_after: int):
        self.target_port, self.cut_after = target_port, cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
        self._pump(server, client, self.cut_after)

    def _pump(self, source, sink, limit) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: limit - sent])
                    self.cut.set()
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.django_db
def test_connection_cut_mid_fetch(imap_account, mailbox, devmail):
    seed(mailbox, {"INBOX": corpus_files("notmuch", "lkml")})
    proxy = CuttingProxy(devmail.imap_port, cut_after=300_000)  # well into the bodies
    with tenant_scope(imap_account.tenant_id):
        imap_account.port, imap_account.encryption = proxy.port, "none"
        imap_account.save()

    with pytest.raises(MailServerError):
        sync(imap_account)
    assert proxy.cut.is_set()
    partial = stored(imap_account)
    proxy.close()

    with tenant_scope(imap_account.tenant_id):
        imap_account.port = devmail.imap_port
        imap_account.save()
    sync(imap_account)

    assert 0 < partial < stored(imap_account)
    assert_in_step(mailbox, imap_account)


# --- Servers without CONDSTORE / QRESYNC ------------------------------------------------


@pytest.fixture(scope="module", params=[(True, False), (False, False)], ids=["condstore-only", "neither"])
def limited_devmail(request, tmp_path_factory):
    import devmail as devmail_module

    condstore, qresync = request.param
    port = devmail_module.free_port
    server = devmail_module.DevMail(
        tmp_path_factory.mktemp("limited"),
        imap_port=port(),
        pop3_port=None,
        imaps_port=None,
        pop3s_port=None,
        condstore=condstore,
        qresync=qresync,
    )
    server.start()
    yield server
    server.stop()


@pytest.mark.django_db
def test_sync_without_condstore_or_qresync(limited_devmail, mail_settings, tenant_a, user_a, monkeypatch):
    # Small UID ranges, so that flag and expunge checks span many ranges.
    monkeypatch.setattr("mailboxes.sync.engine.FLAG_RANGE", 7)
    limited_devmail.add_user("plain", PASSWORD)
    client = imap(limited_devmail, "plain")
    capabilities = {c.upper() for c in client.capabilities()}
    assert b"QRESYNC" not in capabilities
    assert (b"CONDSTORE" in capabilities) == limited_devmail.condstore
    account = EmailAccountFactory(
        tenant=tenant_a,
        user=user_a,
        hostname="127.0.0.1",
        port=limited_devmail.imap_port,
        encryption="starttls",
        username="plain",
    )
    mail_settings.MAIL_TLS_CA_FILE = str(limited_devmail.ca_file)
    seed(
        client, {"INBOX": corpus_files("notmuch", "lkml")[:60], "Lists": corpus_files("notmuch", "threading")}
    )
    sync(account)
    assert_in_step(client, account)

    client.select_folder("INBOX")
    uids = client.search(["ALL"])
    client.add_flags(uids[:10], [b"\\Flagged"])
    client.remove_flags(uids[10:20], [b"\\Seen"])
    client.delete_messages(uids[20:25])
    client.expunge()
    client.append("INBOX", corpus_files("notmuch", "lkml")[60].read_bytes(), flags=[b"\\Seen"])
    client.select_folder("Lists")
    client.delete_messages(client.search(["ALL"])[:2])
    client.expunge()

    report = sync(account)

    assert report.expunged == 7
    assert report.new == 1
    assert_in_step(client, account)
    client.logout()
    # Our session saw the server as it advertised itself.
    from mailboxes.sync import server_config

    with ImapSession(server_config(account), "plain", PASSWORD) as session:
        assert (session.condstore, session.qresync) == (limited_devmail.condstore, False)
