"""The operator's admin sees every tenant and writes through the services."""

import pytest
from django.test import Client

from accounts.models import EmailAccount
from accounts.services import account_credentials
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import UserFactory


@pytest.fixture
def operator_client(committed_db):
    operator = UserFactory(username="operator", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    return client


def test_admin_lists_accounts_of_every_tenant(operator_client, tenant_a, tenant_b):
    EmailAccountFactory(tenant=tenant_a, email_address="a@a.example")
    EmailAccountFactory(tenant=tenant_b, email_address="b@b.example")

    page = operator_client.get("/admin/accounts/emailaccount/").content.decode()

    assert "a@a.example" in page and "b@b.example" in page


def test_admin_creates_an_account_through_the_service(operator_client, tenant_b):
    owner = UserFactory(username="owner-b")
    response = operator_client.post(
        "/admin/accounts/emailaccount/add/",
        {
            "tenant": tenant_b.id,
            "user": owner.id,
            "account_name": "Ops made",
            "email_address": "made@b.example",
            "protocol": "imap",
            "hostname": "imap.b.example",
            "port": 993,
            "encryption": "tls",
            "username": "made",
            "sync_interval": 300,
            "is_sync_enabled": "on",
            "is_enabled": "on",
            "password": "pw from ops",
            "smtp_hostname": "",
            "smtp_encryption": "",
            "smtp_username": "",
            "smtp_password": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    with tenant_scope(tenant_b.id):
        account = EmailAccount.objects.get(email_address="made@b.example")
        audit = AuditLog.objects.get(object_id=account.id)
    assert account_credentials(account=account).password == "pw from ops"
    assert audit.action == "account.create" and audit.actor.username == "operator"


def test_admin_edit_form_never_shows_the_password(operator_client, tenant_a):
    account = EmailAccountFactory(tenant=tenant_a)
    page = operator_client.get(f"/admin/accounts/emailaccount/{account.id}/change/").content.decode()
    assert account.password_encrypted not in page
    assert "mail-password" not in page


def test_audit_log_is_read_only(operator_client, tenant_a, user_a):
    response = operator_client.get("/admin/core/auditlog/add/")
    assert response.status_code == 403
