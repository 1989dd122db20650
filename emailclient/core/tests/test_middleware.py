"""The tenant setting never outlives its request.

These tests commit for real (`committed_db`): the tenant transaction is the
outermost one, as in production, on one persistent connection.
"""

import pytest
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import connection
from django.http import HttpResponse
from django.test import Client, RequestFactory
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from accounts import selectors
from accounts.tests.factories import EmailAccountFactory
from conftest import bearer_client
from emailclient.core.middleware import TenantMiddleware
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


# --- The bearer road and the general road give the same answers -------------------------------


@pytest.mark.django_db
def test_a_deactivated_tenant_is_a_404_for_its_members(tenant_a, user_a):
    client = bearer_client(user_a)
    assert client.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-a").status_code == 200
    tenant_a.is_active = False
    tenant_a.save()
    for ref in ("tenant-a", str(tenant_a.id)):
        response = client.get("/api/accounts/", HTTP_X_TENANT_ID=ref)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_a_deleted_users_token_is_a_401_not_a_404(tenant_a, user_a):
    client = bearer_client(user_a, tenant_a)
    with tenant_scope(tenant_a.id):  # its membership goes with it
        user_a.delete()
    assert client.get("/api/accounts/").status_code == 401
    assert client.get("/api/accounts/", HTTP_X_TENANT_ID="no-such-tenant").status_code == 401


@pytest.mark.django_db
def test_revoked_tokens_are_refused_when_revocation_is_on(tenant_a, user_a, monkeypatch):
    """simplejwt's CHECK_REVOKE_TOKEN: a password change ends the tokens
    issued before it. The membership read carries the user, so the check is
    the middleware's to make. (simplejwt's modules hold its settings object
    from import time: it is changed in place, as overriding SIMPLE_JWT would
    replace it unseen.)"""
    monkeypatch.setattr(jwt_settings, "CHECK_REVOKE_TOKEN", True)
    client = bearer_client(user_a, tenant_a)
    assert client.get("/api/accounts/").status_code == 200
    user_a.set_password("another correct horse")
    user_a.save()
    assert client.get("/api/accounts/").status_code == 401


@pytest.mark.django_db
def test_a_browser_session_takes_the_general_road(tenant_a, tenant_b, user_a, settings):
    """The browsable API (local settings) authenticates by session: no bearer
    token, so the middleware reads the user, the tenant and the membership.
    (DRF's views keep the authentication classes of their import, so this is
    the middleware alone, behind Django's session and auth middleware.)"""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "emailclient.core.authentication.JWTAuthentication",
            "rest_framework.authentication.SessionAuthentication",
        ],
    }
    client = Client()
    client.force_login(user_a)
    seen = []

    def view(request):
        seen.append((request.tenant, request.membership))
        return HttpResponse()

    middleware = SessionMiddleware(AuthenticationMiddleware(TenantMiddleware(view)))
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    factory = RequestFactory(HTTP_COOKIE=f"{settings.SESSION_COOKIE_NAME}={session}")

    assert middleware(factory.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-a")).status_code == 200
    [(tenant, membership)] = seen
    assert (tenant, membership.user_id) == (tenant_a, user_a.id)
    assert middleware(factory.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-b")).status_code == 404
    assert len(seen) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer ", "Basic YWxpY2U6eA==", "Bearer \x00"])
def test_a_malformed_authorization_header_is_a_401(tenant_a, user_a, header):
    client = Client(raise_request_exception=False)
    response = client.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-a", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401


def test_a_process_that_has_not_seen_the_database_secured_refuses_tenant_requests(
    committed_db, tenant_a, user_a, monkeypatch
):
    """A web worker that could not reach the database at start-up checks it
    before its first tenant request: a table without forced RLS is a 503."""
    from django.db import connections

    from emailclient.core import rls

    monkeypatch.setattr(rls, "_secured", False)
    client = bearer_client(user_a, tenant_a)
    with connections["owner"].cursor() as cursor:
        cursor.execute('ALTER TABLE "email_accounts" NO FORCE ROW LEVEL SECURITY')
    try:
        refused = client.get("/api/accounts/")
    finally:
        with connections["owner"].cursor() as cursor:
            cursor.execute('ALTER TABLE "email_accounts" FORCE ROW LEVEL SECURITY')
    served = client.get("/api/accounts/")

    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "database_not_secured")
    assert served.status_code == 200
    assert rls._secured is True


def test_a_database_out_of_reach_is_a_503_not_a_500(db, tenant_a, user_a, monkeypatch):
    """The isolation check before the first tenant request cannot connect."""
    from django.db import connections

    from emailclient.core import rls

    monkeypatch.setattr(rls, "_secured", False)
    monkeypatch.setitem(connections["default"].settings_dict, "PORT", "1")  # nothing listens there

    response = bearer_client(user_a, tenant_a).get("/api/accounts/")

    assert (response.status_code, response.json()["error"]["code"]) == (503, "database_unavailable")
    assert rls._secured is False


def test_a_worker_that_has_not_seen_the_database_secured_runs_no_task(committed_db, monkeypatch):
    from django.db import connections

    from compose.tasks import dispatch_due_task
    from emailclient.core import rls

    monkeypatch.setattr(rls, "_secured", False)
    with connections["owner"].cursor() as cursor:
        cursor.execute('ALTER TABLE "email_accounts" NO FORCE ROW LEVEL SECURITY')
    try:
        refused = dispatch_due_task.apply()
    finally:
        with connections["owner"].cursor() as cursor:
            cursor.execute('ALTER TABLE "email_accounts" FORCE ROW LEVEL SECURITY')
    served = dispatch_due_task.apply()

    assert refused.failed() and isinstance(refused.result, rls.DatabaseNotSecured), refused.traceback
    assert served.successful(), served.traceback
