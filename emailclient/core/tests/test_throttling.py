"""API throttles: per user, per tenant, searches, sync triggers; 429 with
Retry-After at the limit's count + 1, per-tenant overrides, tenants apart.

The test settings raise the defaults (so the rest of the suite is never
throttled); each test here sets a small rate itself."""

import logging
import runpy
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django_ratelimit.core import _split_rate, get_usage

from conftest import bearer_client
from emailclient.core import throttling
from emailclient.core.limits import validate_rate
from emailclient.core.tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

ACCOUNTS = "/api/accounts/"


def assert_throttled(response):
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_user_limit_answers_429_with_retry_after_at_count_plus_one(client_a, settings):
    settings.API_RATE_LIMIT_USER = "3/m"
    assert [client_a.get(ACCOUNTS).status_code for _ in range(3)] == [200, 200, 200]
    assert_throttled(client_a.get(ACCOUNTS))


def test_user_limit_is_each_users_own(client_a, client_admin_a, settings):
    settings.API_RATE_LIMIT_USER = "2/m"
    assert [client_a.get(ACCOUNTS).status_code for _ in range(3)] == [200, 200, 429]
    assert client_admin_a.get(ACCOUNTS).status_code == 200


def test_the_users_limit_covers_every_api_endpoint(client_a, account_a, settings):
    settings.API_RATE_LIMIT_USER = "3/m"
    assert client_a.get(ACCOUNTS).status_code == 200
    assert client_a.get("/api/messages/").status_code == 200
    assert client_a.get(f"/api/sync/status/{account_a.id}").status_code == 200
    assert_throttled(client_a.get(f"/api/accounts/{account_a.id}"))


def test_tenant_limit_is_shared_by_its_users_and_spares_other_tenants(
    client_a, client_admin_a, client_b, settings
):
    settings.API_RATE_LIMIT_TENANT = "4/m"
    assert [client_a.get(ACCOUNTS).status_code for _ in range(2)] == [200, 200]
    assert [client_admin_a.get(ACCOUNTS).status_code for _ in range(2)] == [200, 200]
    assert_throttled(client_a.get(ACCOUNTS))
    assert_throttled(client_admin_a.get(ACCOUNTS))
    # Tenant B's budget is its own.
    assert [client_b.get(ACCOUNTS).status_code for _ in range(4)] == [200] * 4
    assert_throttled(client_b.get(ACCOUNTS))


def test_a_user_over_their_own_limit_does_not_use_up_the_tenants(client_a, client_admin_a, settings):
    settings.API_RATE_LIMIT_USER = "2/m"
    settings.API_RATE_LIMIT_TENANT = "4/m"
    assert [client_a.get(ACCOUNTS).status_code for _ in range(10)] == [200, 200] + [429] * 8
    assert [client_admin_a.get(ACCOUNTS).status_code for _ in range(2)] == [200, 200]


def test_the_counters_are_django_ratelimits_own(client_a, user_a, tenant_a, settings, rf):
    """Counted by one script a request, read by django-ratelimit's
    `get_usage`: the same keys and windows, each counter at its own count."""
    settings.API_RATE_LIMIT_USER = "5/m"
    settings.API_RATE_LIMIT_TENANT = "7/m"
    assert [client_a.get(ACCOUNTS).status_code for _ in range(7)] == [200] * 5 + [429] * 2

    def usage(group: str, key: str, rate: str) -> dict:
        return get_usage(rf.get("/"), group=group, key=lambda _g, _r: key, rate=rate, increment=False)

    user = usage("api.user", f"{tenant_a.id}:{user_a.pk}", "5/m")
    tenant = usage("api.tenant", str(tenant_a.id), "7/m")
    assert (user["count"], user["should_limit"]) == (7, True)  # the refused ones counted here...
    assert (tenant["count"], tenant["should_limit"]) == (5, False)  # ...and not in the tenant's


def test_tenant_override_applies_to_that_tenant_only(client_a, client_b, tenant_a, settings):
    settings.API_RATE_LIMIT_USER = "5/m"
    tenant_a.api_rate_limit_user = "2/m"
    tenant_a.save(update_fields=["api_rate_limit_user"])
    assert [client_a.get(ACCOUNTS).status_code for _ in range(3)] == [200, 200, 429]
    assert [client_b.get(ACCOUNTS).status_code for _ in range(6)] == [200] * 5 + [429]


def test_tenant_override_of_the_tenant_limit(client_a, client_b, tenant_b, settings):
    tenant_b.api_rate_limit_tenant = "1/m"
    tenant_b.save(update_fields=["api_rate_limit_tenant"])
    assert [client_b.get(ACCOUNTS).status_code for _ in range(2)] == [200, 429]
    assert [client_a.get(ACCOUNTS).status_code for _ in range(3)] == [200, 200, 200]


def test_searches_have_their_own_limit(client_a, client_b, account_a, tenant_b, user_b, settings):
    from accounts.tests.factories import EmailAccountFactory

    EmailAccountFactory(tenant=tenant_b, user=user_b)
    settings.API_RATE_LIMIT_SEARCH = "2/m"
    assert client_a.get("/api/sync/search", {"query": "invoice"}).status_code == 200
    assert client_a.get("/api/messages/", {"q": "invoice"}).status_code == 200  # a search too
    assert_throttled(client_a.get("/api/sync/search", {"query": "invoice"}))
    assert_throttled(client_a.get("/api/messages/", {"q": "invoice"}))
    # Listing without a query is not a search; another tenant's user searches on.
    assert client_a.get("/api/messages/").status_code == 200
    assert client_b.get("/api/sync/search", {"query": "invoice"}).status_code == 200


def test_search_override_per_tenant(client_a, account_a, tenant_a, settings):
    settings.API_RATE_LIMIT_SEARCH = "5/m"
    tenant_a.api_rate_limit_search = "1/m"
    tenant_a.save(update_fields=["api_rate_limit_search"])
    assert client_a.get("/api/sync/search", {"query": "x"}).status_code == 200
    assert_throttled(client_a.get("/api/sync/search", {"query": "x"}))


def test_sync_triggers_are_limited_per_account(client_a, account_a, tenant_a, user_a, settings):
    from accounts.tests.factories import EmailAccountFactory

    settings.SYNC_TRIGGER_RATE_LIMIT = "2/m"
    other = EmailAccountFactory(tenant=tenant_a, user=user_a)
    url = f"/api/sync/imap/{account_a.id}"
    assert [client_a.post(url).status_code for _ in range(2)] == [202, 202]
    assert_throttled(client_a.post(url))
    assert_throttled(client_a.post(f"/api/accounts/{account_a.id}/sync"))  # the seed's form, same count
    assert client_a.post(f"/api/sync/imap/{other.id}").status_code == 202


def test_sync_trigger_of_someone_elses_account_counts_nothing(
    client_a, client_b, account_a, tenant_a, settings
):
    settings.SYNC_TRIGGER_RATE_LIMIT = "1/m"
    url = f"/api/sync/imap/{account_a.id}"
    assert [client_b.post(url).status_code for _ in range(3)] == [404] * 3
    assert client_a.post(url).status_code == 202


def test_sync_trigger_override_per_tenant(client_a, account_a, tenant_a, settings):
    settings.SYNC_TRIGGER_RATE_LIMIT = "5/m"
    tenant_a.sync_trigger_rate_limit = "1/m"
    tenant_a.save(update_fields=["sync_trigger_rate_limit"])
    url = f"/api/sync/imap/{account_a.id}"
    assert client_a.post(url).status_code == 202
    assert_throttled(client_a.post(url))


def test_health_and_the_schema_are_not_throttled(client_a, user_a, tenant_a, settings):
    settings.API_RATE_LIMIT_USER = "1/m"
    settings.API_RATE_LIMIT_TENANT = "1/m"
    assert client_a.get(ACCOUNTS).status_code == 200
    assert_throttled(client_a.get(ACCOUNTS))
    for _ in range(3):
        assert client_a.get("/health").status_code == 200
        assert client_a.get("/api/schema").status_code == 200  # with the tenant header, still not counted


def test_a_request_refused_before_the_view_counts_nothing(api_client, client_a, settings):
    settings.API_RATE_LIMIT_TENANT = "2/m"
    for _ in range(5):
        # No credentials: 401 before any throttle, nothing counted against tenant A.
        assert api_client.get(ACCOUNTS, HTTP_X_TENANT_ID="tenant-a").status_code == 401
    stranger = bearer_client(UserFactory(username="mallory"))
    for _ in range(5):
        assert stranger.get(ACCOUNTS, HTTP_X_TENANT_ID="tenant-a").status_code == 404
    assert [client_a.get(ACCOUNTS).status_code for _ in range(3)] == [200, 200, 429]


def test_the_limit_is_per_tenant_for_a_user_in_two_tenants(user_a, tenant_a, tenant_b, settings):
    settings.API_RATE_LIMIT_USER = "1/m"
    MembershipFactory(tenant=tenant_b, user=user_a)
    in_a, in_b = bearer_client(user_a, tenant_a), bearer_client(user_a, tenant_b)
    assert in_a.get(ACCOUNTS).status_code == 200
    assert_throttled(in_a.get(ACCOUNTS))
    assert in_b.get(ACCOUNTS).status_code == 200


def test_the_real_defaults_exist_and_parse():
    """base.py's defaults (the test settings raise them): the issue's starting
    points, each a valid django-ratelimit rate."""
    base = runpy.run_path(str(Path(django_settings.BASE_DIR) / "emailclient" / "settings" / "base.py"))
    expected = {
        "API_RATE_LIMIT_USER": ("600/m", 600, 60),
        "API_RATE_LIMIT_TENANT": ("3000/m", 3000, 60),
        "API_RATE_LIMIT_SEARCH": ("120/m", 120, 60),
        "SYNC_TRIGGER_RATE_LIMIT": ("6/m", 6, 60),
        "AUTH_RATE_LIMIT": ("5/m", 5, 60),
        "AUTH_USERNAME_RATE_LIMIT": ("5/m", 5, 60),
        "AUTH_USERNAME_TOTAL_RATE_LIMIT": ("100/h", 100, 3600),
        "AUTH_REFRESH_RATE_LIMIT": ("60/m", 60, 60),
    }
    for name, (rate, count, seconds) in expected.items():
        assert base[name] == rate, name
        validate_rate(base[name])
        assert _split_rate(base[name]) == (count, seconds)
    assert base["TRUSTED_PROXY_HOPS"] == 0
    assert base["REST_FRAMEWORK"]["DEFAULT_THROTTLE_CLASSES"] == ["emailclient.core.throttling.ApiThrottle"]


def test_signed_download_urls_count_against_the_users_and_tenants_limits(
    api_client, client_a, client_b, inbox_a, blobs, settings
):
    """A `?token=` download carries no bearer token: it was never counted."""
    from messages.tests.factories import AttachmentFactory, MessageFactory

    message = MessageFactory(folder=inbox_a)
    AttachmentFactory(message=message, content_hash=blobs.put(inbox_a.tenant_id, b"bytes"))
    url = client_a.get(f"/api/messages/{message.id}/").json()["attachments"][0]["download_url"]
    settings.API_RATE_LIMIT_USER = "3/m"  # (a counter of its own: the rate is in its key)

    assert [api_client.get(url).status_code for _ in range(3)] == [200, 200, 200]
    assert_throttled(api_client.get(url))
    assert_throttled(client_a.get(ACCOUNTS))  # the same budget as the user's API requests
    assert client_b.get(ACCOUNTS).status_code == 200


def test_signed_download_urls_count_against_the_tenants_limit(api_client, client_a, inbox_a, blobs, settings):
    from messages.tests.factories import AttachmentFactory, MessageFactory

    message = MessageFactory(folder=inbox_a)
    AttachmentFactory(message=message, content_hash=blobs.put(inbox_a.tenant_id, b"bytes"))
    url = client_a.get(f"/api/messages/{message.id}/").json()["attachments"][0]["download_url"]
    settings.API_RATE_LIMIT_TENANT = "3/m"

    assert [api_client.get(url).status_code for _ in range(3)] == [200, 200, 200]
    assert_throttled(api_client.get(url))
    # With the user's bearer token and the signed token as well: counted once.
    settings.API_RATE_LIMIT_TENANT = "2/m"
    assert [client_a.get(url).status_code for _ in range(2)] == [200, 200]
    assert_throttled(client_a.get(url))


# --- Redis away ------------------------------------------------------------------------------

REDIS_AWAY = {
    "default": {
        "BACKEND": "emailclient.core.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        "KEY_PREFIX": "emailclient-test",
    }
}


def test_with_redis_away_reads_go_on_uncounted_and_are_logged(client_a, account_a, settings, caplog):
    """Django's RedisCache raises ConnectionError, which django-ratelimit does
    not catch: every tenant request was a 500."""
    caplog.set_level(logging.WARNING, logger="emailclient.core.throttling")
    settings.CACHES = REDIS_AWAY
    throttling._uncounted["logged_at"] = float("-inf")

    responses = [client_a.get(ACCOUNTS), client_a.get(f"{ACCOUNTS}{account_a.id}/")]

    assert [r.status_code for r in responses] == [200, 200]
    warnings = [r.getMessage() for r in caplog.records if r.name == "emailclient.core.throttling"]
    assert len(warnings) == 1  # one a minute, not one a request
    assert warnings[0].startswith("rate limit counters unavailable (ConnectionError")


def test_with_redis_away_writes_and_logins_are_503(client_a, account_a, api_client, settings):
    settings.CACHES = REDIS_AWAY

    write = client_a.patch(f"{ACCOUNTS}{account_a.id}/", {"display_name": "x"}, format="json")
    login = api_client.post("/api/auth/token/", {"username": "u", "password": "p"}, format="json")

    for response in (write, login):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limiter_unavailable"
        assert response["Retry-After"] == "5"
