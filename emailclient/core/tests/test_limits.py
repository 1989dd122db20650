"""A tenant's limits: the setting's default unless the operator set its own."""

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

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


@pytest.mark.parametrize("rate", ["600", "0/m", "600/x", "-1/m", "600/m ", "ten/m", "600/mm"])
def test_other_rates_are_refused(rate):
    with pytest.raises(ValidationError):
        validate_rate(rate)


def test_operator_sets_a_tenant_limit_in_the_admin(committed_db):
    tenant = Tenant.objects.create(slug="admin-limits", name="Admin limits")
    client = Client()
    client.force_login(UserFactory(username="limits-operator", is_staff=True, is_superuser=True))
    form = {"name": tenant.name, "slug": tenant.slug, "is_active": "on"}

    refused = client.post(f"/admin/core/tenant/{tenant.id}/change/", {**form, "api_rate_limit_user": "lots"})
    saved = client.post(f"/admin/core/tenant/{tenant.id}/change/", {**form, "api_rate_limit_user": "20/m"})

    assert refused.status_code == 200 and b"Enter a rate" in refused.content
    assert saved.status_code == 302
    tenant.refresh_from_db()
    assert tenant.api_rate_limit_user == "20/m"
    assert tenant.max_accounts is None
