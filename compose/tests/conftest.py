"""Fixtures of the compose tests: a real SMTP server (aiosmtpd, see
`compose/tests/smtpserver.py`) and the real Dovecot of the sync tests.

    def test_something(smtp_server, smtp_account):
        ...send from smtp_account...
        assert len(smtp_server.deliveries) == 1

`smtp_server`: the session's `SmtpSink`, reset for each test (no deliveries,
no faults, no hidden extensions), with the login `SMTP_USER`/`SMTP_PASSWORD`.
It uses the devmail certificate, so one CA file (`MAIL_TLS_CA_FILE`, set by
`mail_settings`) is trusted for both IMAP and SMTP.

`smtp_account`: Alice's (tenant_a/user_a) account on a fresh Dovecot user
(IMAP with STARTTLS, as `imap_account`), sending through the sink's STARTTLS
port as `SMTP_USER`. `mail_settings` is applied (CA file, blob directory).

`broker`: the real broker's queue, emptied first; `broker_sends()` reads the
send tasks waiting on it.
"""

import base64
import json

import pytest
import redis
from django.conf import settings

from accounts.tests.factories import EmailAccountFactory
from compose.tests.smtpserver import SmtpSink
from emailclient.core.crypto import encrypt_secret
from mailboxes.tests.conftest import devmail, mail_settings, mail_user, mailbox  # noqa: F401

SMTP_USER = "smtp-sender"
SMTP_PASSWORD = "smtp-password"


@pytest.fixture(scope="session")
def smtp_sink(devmail):  # noqa: F811
    sink = SmtpSink(devmail.cert_file, devmail.key_file)
    sink.default_users = {SMTP_USER: SMTP_PASSWORD}
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def smtp_server(smtp_sink):
    smtp_sink.reset()
    yield smtp_sink
    smtp_sink.reset()


@pytest.fixture
def smtp_account(mail_settings, devmail, mail_user, smtp_server, tenant_a, user_a):  # noqa: F811
    return EmailAccountFactory(
        tenant=tenant_a,
        user=user_a,
        email_address=f"{mail_user}@example.com",
        hostname="127.0.0.1",
        port=devmail.imap_port,
        encryption="starttls",
        username=mail_user,
        smtp_hostname="127.0.0.1",
        smtp_port=smtp_server.port("starttls"),
        smtp_encryption="starttls",
        smtp_username=SMTP_USER,
        smtp_password_encrypted=encrypt_secret(SMTP_PASSWORD),
    )


def broker_sends() -> list[tuple[dict, dict]]:
    """The compose.tasks.send messages waiting on the real broker: (kwargs, headers)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "compose.tasks.send":
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            found.append(({"args": args, **kwargs}, message["headers"]))
    return found


@pytest.fixture
def broker():
    """The test broker's queue, empty at the start."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("celery")
    return client
