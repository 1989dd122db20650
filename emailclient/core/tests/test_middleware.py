"""The tenant setting never outlives its request.

These tests commit for real (`committed_db`): the tenant transaction is the
outermost one, as in production, on one persistent connection.
"""

from django.db import connection

from accounts import selectors
from accounts.tests.factories import EmailAccountFactory
from conftest import bearer_client
from emailclient.core.tenancy import tenant_scope


def _backend_state():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid(), current_setting('app.current_tenant_id', true), "
            "(SELECT count(*) FROM email_accounts)"
        )
        return cursor.fetchone()


def test_tenant_setting_does_not_leak_between_requests(committed_db, tenant_a, tenant_b, user_a, monkeypatch):
    from emailclient.core.tests.factories import MembershipFactory

    MembershipFactory(tenant=tenant_b, user=user_a)
    account_a = EmailAccountFactory(tenant=tenant_a, user=user_a)
    account_b = EmailAccountFactory(tenant=tenant_b, user=user_a)
    client = bearer_client(user_a)
    client.raise_request_exception = False

    response = client.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-a")
    assert [a["id"] for a in response.json()["results"]] == [str(account_a.id)]
    pid, setting, visible = _backend_state()
    assert (setting or "", visible) == ("", 0)

    response = client.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-b")
    assert [a["id"] for a in response.json()["results"]] == [str(account_b.id)]
    pid_after_b, setting, visible = _backend_state()
    assert pid_after_b == pid, "the test must run on one persistent connection"
    assert (setting or "", visible) == ("", 0)

    # A request that raises half-way, after writing under tenant A.
    def explode(**kwargs):
        EmailAccountFactory(tenant=tenant_a, user=user_a, account_name="half-written")
        raise RuntimeError("boom")

    monkeypatch.setattr("accounts.views.account_list", explode)
    response = client.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-a")
    assert response.status_code == 500
    pid_after_error, setting, visible = _backend_state()
    assert pid_after_error == pid
    assert (setting or "", visible) == ("", 0)
    monkeypatch.undo()
    with tenant_scope(tenant_a.id):
        # The half-written row was rolled back with the failed request.
        assert not selectors.EmailAccount.objects.filter(account_name="half-written").exists()

    # A request with no tenant at all: refused, and sees nothing.
    response = client.get("/api/accounts/")
    assert response.status_code == 400
    pid_last, setting, visible = _backend_state()
    assert pid_last == pid
    assert (setting or "", visible) == ("", 0)
