"""Account quotas per tenant and per user, and mail ports: a clear 4xx from
the API and a form error in the admin (both through the same service),
always with a second tenant in the room."""

import pytest
from django.test import Client

from accounts.models import EmailAccount
from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import Tenant
from emailclient.core.tenancy import tenant_scope
from emailclient.core.tests.factories import MembershipFactory, UserFactory

URL = "/api/accounts/"

VALID = {
    "account_name": "Work",
    "email_address": "alice@example.com",
    "protocol": "imap",
    "hostname": "imap.example.com",
    "encryption": "tls",
    "password": "app-password",
}


def _new(n: int) -> dict:
    return {**VALID, "email_address": f"alice{n}@example.com"}


def accounts_of(tenant) -> int:
    with tenant_scope(tenant.id):
        return EmailAccount.objects.filter(tenant=tenant, is_deleted=False).count()


@pytest.mark.django_db
def test_the_tenants_account_quota_is_a_403_that_says_so(client_a, client_b, tenant_a, tenant_b, user_b):
    Tenant.objects.filter(id=tenant_a.id).update(max_accounts=2)
    assert client_a.post(URL, _new(1), format="json").status_code == 201
    assert client_a.post(URL, _new(2), format="json").status_code == 201

    refused = client_a.post(URL, _new(3), format="json")

    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and "max_accounts" in error["message"]
    assert accounts_of(tenant_a) == 2
    # The other tenant has its own (default: unlimited) quota.
    for n in range(3):
        assert client_b.post(URL, _new(n), format="json").status_code == 201


@pytest.mark.django_db
def test_a_deleted_account_frees_its_place(client_a, tenant_a):
    Tenant.objects.filter(id=tenant_a.id).update(max_accounts=1)
    first = client_a.post(URL, _new(1), format="json").json()
    assert client_a.post(URL, _new(2), format="json").status_code == 403
    assert client_a.delete(f"{URL}{first['id']}/").status_code == 204
    assert client_a.post(URL, _new(2), format="json").status_code == 201


@pytest.mark.django_db
def test_the_per_user_quota_counts_each_user_apart(client_a, client_admin_a, tenant_a, settings):
    settings.TENANT_MAX_ACCOUNTS_PER_USER = 1  # the setting's default, no override on the tenant
    assert client_a.post(URL, _new(1), format="json").status_code == 201
    refused = client_a.post(URL, _new(2), format="json")
    assert refused.status_code == 403
    assert "max_accounts_per_user" in refused.json()["error"]["message"]
    assert client_admin_a.post(URL, _new(3), format="json").status_code == 201
    # The tenant's own value wins over the setting.
    Tenant.objects.filter(id=tenant_a.id).update(max_accounts_per_user=2)
    assert client_a.post(URL, _new(2), format="json").status_code == 201


@pytest.mark.django_db
def test_a_port_that_is_not_a_mail_port_is_a_400(client_a, tenant_a, settings):
    settings.MAIL_ALLOWED_PORTS = [143, 993, 587]
    response = client_a.post(URL, {**VALID, "port": 6379}, format="json")
    assert response.status_code == 400
    assert "port" in response.json()["error"]["fields"]
    response = client_a.post(
        URL, {**VALID, "smtp_hostname": "smtp.example.com", "smtp_port": 8080}, format="json"
    )
    assert response.status_code == 400 and "smtp_port" in response.json()["error"]["fields"]
    created = client_a.post(URL, VALID, format="json")
    assert created.status_code == 201
    moved = client_a.patch(f"{URL}{created.json()['id']}/", {"port": 22, "password": "x"}, format="json")
    assert moved.status_code == 400 and "port" in moved.json()["error"]["fields"]
    assert accounts_of(tenant_a) == 1


def test_the_admin_shows_the_quota_as_a_form_error(committed_db, tenant_b):
    operator = UserFactory(username="operator", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    owner = UserFactory(username="owner-b")
    MembershipFactory(tenant=tenant_b, user=owner)
    EmailAccountFactory(tenant=tenant_b, user=owner)
    Tenant.objects.filter(id=tenant_b.id).update(max_accounts=1)

    response = client.post(
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
            "is_enabled": "on",
            "password": "pw from ops",
        },
    )

    assert response.status_code == 200  # the form again, with the error; not a 500
    assert "max_accounts" in response.content.decode()
    assert accounts_of(tenant_b) == 1
