"""A tenant's limits: the setting's default unless the operator set its own."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from emailclient.core.checks import RATE_SETTINGS, rate_settings_errors
from emailclient.core.limits import TENANT_LIMIT_SETTINGS, tenant_limit, validate_rate
from emailclient.core.models import Tenant
from emailclient.core.tests.factories import UserFactory


@pytest.mark.django_db
def test_every_limit_has_a_tenant_field_and_a_setting(settings):
    tenant = Tenant.objects.create(slug="limits", name="Limits")
    for field, setting in TENANT_LIMIT_SETTINGS.items():
        Tenant._meta.get_field(field)
        assert tenant_limit(tenant, field) == getattr(settings, setting)


@pytest.mark.django_db
def test_a_tenant_override_wins_over_the_setting(settings):
    settings.API_RATE_LIMIT_USER = "600/m"
    settings.TENANT_MAX_ACCOUNTS = None
    tenant = Tenant.objects.create(slug="own", name="Own", api_rate_limit_user="20/m", max_accounts=3)

    assert tenant_limit(tenant, "api_rate_limit_user") == "20/m"
    assert tenant_limit(tenant, "max_accounts") == 3
    assert tenant_limit(None, "api_rate_limit_user") == "600/m"


@pytest.mark.parametrize("rate", ["600/m", "10/5m", "1000/h", "1/s", "5/d"])
def test_rates_in_ratelimit_syntax_are_accepted(rate):
    validate_rate(rate)


@pytest.mark.parametrize(
    "rate", ["600", "0/m", "600/x", "-1/m", "600/m ", "ten/m", "600/mm", "10/0m", "10/00m", "10/05m"]
)
def test_other_rates_are_refused(rate):
    with pytest.raises(ValidationError):
        validate_rate(rate)


def test_operator_sets_a_tenant_limit_in_the_admin(committed_db, settings):
    settings.API_RATE_LIMIT_USER = "600/m"
    settings.TENANT_MAX_ACCOUNTS = None
    tenant = Tenant.objects.create(slug="admin-limits", name="Admin limits")
    client = Client()
    client.force_login(UserFactory(username="limits-operator", is_staff=True, is_superuser=True))
    form = {"name": tenant.name, "slug": tenant.slug, "is_active": "on"}

    page = client.get(f"/admin/core/tenant/{tenant.id}/change/").content.decode()
    assert "API requests per user" in page
    assert "Empty: the service's default, 600/m (API_RATE_LIMIT_USER)." in page
    assert "Empty: the service's default, unlimited (TENANT_MAX_ACCOUNTS)." in page

    refused = client.post(f"/admin/core/tenant/{tenant.id}/change/", {**form, "api_rate_limit_user": "lots"})
    saved = client.post(f"/admin/core/tenant/{tenant.id}/change/", {**form, "api_rate_limit_user": "20/m"})

    assert refused.status_code == 200 and b"Enter a rate" in refused.content
    assert saved.status_code == 302
    tenant.refresh_from_db()
    assert tenant.api_rate_limit_user == "20/m"
    assert tenant.max_accounts is None


def test_every_rate_setting_is_checked_at_start_up(settings):
    assert rate_settings_errors() == []
    settings.API_RATE_LIMIT_USER = "10/0m"
    settings.AUTH_USERNAME_TOTAL_RATE_LIMIT = ""
    assert rate_settings_errors() == [
        "API_RATE_LIMIT_USER='10/0m' is not a rate: a count of at least 1, '/', an optional"
        " multiplier of at least 1 and s, m, h or d (600/m; 10/5m is ten per five minutes)",
        "AUTH_USERNAME_TOTAL_RATE_LIMIT is not set (a rate such as 600/m)",
    ]
    assert set(RATE_SETTINGS) >= {
        "API_RATE_LIMIT_USER",
        "API_RATE_LIMIT_TENANT",
        "API_RATE_LIMIT_SEARCH",
        "SYNC_TRIGGER_RATE_LIMIT",
        "COMPOSE_RATE_LIMIT_USER",
        "COMPOSE_RATE_LIMIT_TENANT",
        "AUTH_RATE_LIMIT",
        "AUTH_USERNAME_RATE_LIMIT",
        "AUTH_REFRESH_RATE_LIMIT",
    }


def test_a_bad_rate_in_the_environment_refuses_to_start():
    """`10/0m` passed the old pattern and made every request counted against
    it a 500; now Django itself does not start (gunicorn, Celery, manage.py)."""
    env = {**os.environ, "AUTH_RATE_LIMIT": "10/0m"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert (
        "ImproperlyConfigured: invalid rate settings: AUTH_RATE_LIMIT='10/0m' is not a rate" in result.stderr
    )


@pytest.mark.django_db
def test_a_stored_rate_that_is_not_one_falls_back_to_the_setting(client_a, tenant_a, settings, caplog):
    """A `10/0m` saved before the pattern refused it made every request of
    that tenant a 500 (django-ratelimit's ImproperlyConfigured)."""
    settings.API_RATE_LIMIT_USER = "2/m"
    Tenant.objects.filter(id=tenant_a.id).update(api_rate_limit_user="10/0m")

    codes = [client_a.get("/api/accounts/").status_code for _ in range(3)]

    assert codes == [200, 200, 429]
    assert "api_rate_limit_user='10/0m' is not a rate; using API_RATE_LIMIT_USER" in caplog.text
