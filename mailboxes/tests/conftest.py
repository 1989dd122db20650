"""A real Dovecot for the sync tests (deploy/devmail), one per test session,
and a fresh mail user per test."""

import contextlib
import itertools
import sys

import pytest
from django.conf import settings
from imapclient import IMAPClient

sys.path.insert(0, str(settings.BASE_DIR / "deploy" / "devmail"))
from devmail import DevMail, free_port

from accounts.tests.factories import EmailAccountFactory

_users = itertools.count(1)
PASSWORD = "mail-password"


@pytest.fixture(scope="session")
def devmail(tmp_path_factory):
    root = tmp_path_factory.mktemp("devmail")
    server = DevMail(
        root, imap_port=free_port(), pop3_port=free_port(), imaps_port=free_port(), pop3s_port=free_port()
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mail_settings(settings, devmail, tmp_path):
    settings.MAIL_TLS_CA_FILE = str(devmail.ca_file)
    settings.BLOB_STORAGE_DIR = tmp_path / "blobs"
    settings.SYNC_BATCH_MESSAGES = 50
    return settings


@pytest.fixture
def mail_user(devmail):
    name = f"user{next(_users)}"
    devmail.add_user(name, PASSWORD)
    return name


def imap(devmail, user) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=devmail.imap_port, ssl=False)
    client.login(user, PASSWORD)
    return client


@pytest.fixture
def mailbox(devmail, mail_user):
    """An IMAP connection to the test user's mailbox, for arranging mail."""
    client = imap(devmail, mail_user)
    yield client
    with contextlib.suppress(Exception):  # a test may have restarted the server
        client.logout()


@pytest.fixture
def imap_account(mail_settings, devmail, mail_user, tenant_a, user_a):
    return EmailAccountFactory(
        tenant=tenant_a,
        user=user_a,
        email_address=f"{mail_user}@example.com",
        hostname="127.0.0.1",
        port=devmail.imap_port,
        encryption="starttls",
        username=mail_user,
    )
