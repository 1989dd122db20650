"""JWT: obtain, rotate, blacklist, verify, rate limits, pinned algorithm."""

import jwt
import pytest
from django.test import override_settings
from rest_framework_simplejwt.tokens import RefreshToken

from emailclient.core.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def user():
    return UserFactory(username="carol")


def obtain(api_client, username="carol", password=PASSWORD, **extra):
    return api_client.post(
        "/api/auth/token/", {"username": username, "password": password}, format="json", **extra
    )


def test_obtain_gives_access_and_refresh(api_client, user):
    response = obtain(api_client)
    assert response.status_code == 200
    assert set(response.json()) == {"access", "refresh"}
    header = jwt.get_unverified_header(response.json()["access"])
    assert header["alg"] == "HS256"


def test_wrong_password_is_401_with_the_error_shape(api_client, user):
    response = obtain(api_client, password="wrong")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "no_active_account"


def test_missing_fields_are_400(api_client, user):
    response = api_client.post("/api/auth/token/", {"username": "carol"}, format="json")
    assert response.status_code == 400
    assert "password" in response.json()["error"]["fields"]


def test_refresh_rotates_and_the_old_refresh_token_is_refused(api_client, user):
    first = obtain(api_client).json()["refresh"]

    rotated = api_client.post("/api/auth/token/refresh/", {"refresh": first}, format="json")
    assert rotated.status_code == 200
    assert set(rotated.json()) == {"access", "refresh"}
    assert rotated.json()["refresh"] != first

    again = api_client.post("/api/auth/token/refresh/", {"refresh": first}, format="json")
    assert again.status_code == 401
    second = api_client.post(
        "/api/auth/token/refresh/", {"refresh": rotated.json()["refresh"]}, format="json"
    )
    assert second.status_code == 200


def test_a_deactivated_user_cannot_refresh(api_client, user):
    refresh = obtain(api_client).json()["refresh"]
    user.is_active = False
    user.save()
    response = api_client.post("/api/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert response.status_code == 401


def test_a_deleted_users_refresh_token_is_401_not_500(api_client, user):
    refresh = str(RefreshToken.for_user(user))
    user.delete()
    response = api_client.post("/api/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert response.status_code == 401


def test_a_deactivated_users_access_token_stops_working(user, tenant_a):
    from conftest import bearer_client
    from emailclient.core.tests.factories import MembershipFactory

    MembershipFactory(tenant=tenant_a, user=user)
    client = bearer_client(user, tenant_a)
    assert client.get("/api/accounts/").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/api/accounts/").status_code == 401


def test_verify(api_client, user):
    access = obtain(api_client).json()["access"]
    assert api_client.post("/api/auth/token/verify/", {"token": access}, format="json").status_code == 200
    assert (
        api_client.post("/api/auth/token/verify/", {"token": access + "x"}, format="json").status_code == 401
    )


@pytest.mark.parametrize(
    "forge",
    [
        # alg "none": no signature at all
        lambda claims, settings: jwt.encode(claims, key=None, algorithm="none"),
        # signed with SECRET_KEY instead of the JWT signing key
        lambda claims, settings: jwt.encode(claims, settings.SECRET_KEY, algorithm="HS256"),
        # right key, other algorithm than the pinned one
        lambda claims, settings: jwt.encode(claims, settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="HS512"),
    ],
)
def test_forged_tokens_are_refused(api_client, user, tenant_a, forge, settings):
    from emailclient.core.tests.factories import MembershipFactory

    MembershipFactory(tenant=tenant_a, user=user)
    claims = dict(RefreshToken.for_user(user).access_token.payload)
    token = forge(claims, settings)
    response = api_client.get(
        "/api/accounts/", HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_X_TENANT_ID="tenant-a"
    )
    assert response.status_code == 401


def test_token_endpoint_is_rate_limited_per_ip(api_client, user):
    codes = [obtain(api_client, username=f"guess{i}", password="wrong").status_code for i in range(5)]
    assert codes == [401] * 5
    limited = obtain(api_client)  # even the right password
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 60
    # Another address has its own budget.
    assert obtain(api_client, REMOTE_ADDR="10.9.8.7").status_code == 200


def test_token_endpoint_is_rate_limited_per_username(api_client, user):
    """Guesses at one account from many addresses of one network meet the
    limit of that username from that network."""
    codes = [obtain(api_client, password="wrong", REMOTE_ADDR=f"10.0.0.{i}").status_code for i in range(5)]
    assert codes == [401] * 5
    limited = obtain(api_client, REMOTE_ADDR="10.0.0.99")
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert obtain(api_client, username="  CAROL ", REMOTE_ADDR="10.0.0.98").status_code == 429  # same name
    # Another user from the same new address logs in.
    UserFactory(username="dave")
    assert obtain(api_client, username="dave", REMOTE_ADDR="10.0.0.99").status_code == 200


def test_an_attacker_does_not_lock_the_user_out_of_other_networks(api_client, user):
    """Five wrong passwords a minute from one network locked the user out
    everywhere, for as long as the attacker kept on."""
    attacker = [
        obtain(api_client, password="wrong", REMOTE_ADDR=f"203.0.113.{i}").status_code for i in range(6)
    ]
    assert attacker == [401] * 5 + [429]
    assert obtain(api_client, REMOTE_ADDR="198.51.100.7").status_code == 200
    # The attacker's /64 counts as one network too.
    ipv6 = [
        obtain(api_client, password="wrong", REMOTE_ADDR=f"2001:db8:0:1::{i}").status_code for i in range(6)
    ]
    assert ipv6 == [401] * 5 + [429]
    assert obtain(api_client, REMOTE_ADDR="2001:db8:0:2::1").status_code == 200


@override_settings(AUTH_USERNAME_TOTAL_RATE_LIMIT="4/h")
def test_guesses_from_many_networks_meet_the_cap_but_known_networks_still_log_in(api_client, user):
    # The user's usual network: remembered, and (new then) counted as 1 of 4.
    assert obtain(api_client, REMOTE_ADDR="198.51.100.7").status_code == 200
    codes = [obtain(api_client, password="wrong", REMOTE_ADDR=f"10.{i}.0.1").status_code for i in range(4)]
    assert codes == [401] * 3 + [429]
    limited = obtain(api_client, REMOTE_ADDR="192.0.2.1")  # right password, new network: held
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 3600
    assert obtain(api_client, REMOTE_ADDR="198.51.100.200").status_code == 200  # same /24 as before
    UserFactory(username="dave")
    assert obtain(api_client, username="dave", REMOTE_ADDR="192.0.2.1").status_code == 200


@override_settings(AUTH_USERNAME_RATE_LIMIT="2/m", AUTH_USERNAME_TOTAL_RATE_LIMIT="3/h")
def test_a_numeric_username_counts_as_that_name(api_client):
    """DRF's CharField takes 12345 as "12345": it skipped the username limits."""
    UserFactory(username="12345")
    codes = [
        obtain(api_client, username=12345, password="wrong", REMOTE_ADDR="10.5.0.1").status_code,
        obtain(api_client, username="12345", password="wrong", REMOTE_ADDR="10.5.0.2").status_code,
        obtain(api_client, username=12345, password="wrong", REMOTE_ADDR="10.5.0.3").status_code,
    ]
    assert codes == [401, 401, 429]
    elsewhere = [
        obtain(api_client, username=12345, password="wrong", REMOTE_ADDR=f"10.6.{i}.1") for i in range(2)
    ]
    assert [r.status_code for r in elsewhere] == [401, 429]  # the cap across networks: 3 counted


@pytest.mark.parametrize("body", [[], ["username"], {"username": ["carol"]}, {"username": 5}, "x"])
def test_odd_login_bodies_are_a_4xx_not_a_500(api_client, user, body):
    response = api_client.post("/api/auth/token/", body, format="json")
    assert response.status_code in {400, 401}


@override_settings(AUTH_RATE_LIMIT="2/m")
def test_rate_is_configurable(api_client, user):
    assert [obtain(api_client).status_code for _ in range(3)] == [200, 200, 429]


@override_settings(AUTH_USERNAME_RATE_LIMIT="2/m")
def test_username_rate_is_configurable(api_client, user):
    codes = [obtain(api_client, REMOTE_ADDR=f"10.0.1.{i}").status_code for i in range(3)]
    assert codes == [200, 200, 429]


@override_settings(AUTH_REFRESH_RATE_LIMIT="3/m")
def test_refresh_has_a_budget_of_its_own(api_client, user):
    refresh = obtain(api_client).json()["refresh"]
    codes = [
        api_client.post("/api/auth/token/refresh/", {"refresh": "x"}, format="json").status_code
        for _ in range(3)
    ]
    assert codes == [401] * 3
    limited = api_client.post("/api/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 60
    # Logins from the same address are not held by the refreshes...
    assert obtain(api_client).status_code == 200
    # ...nor refreshes by the logins.
    for i in range(5):
        obtain(api_client, username=f"guess{i}", password="wrong", REMOTE_ADDR="10.2.0.1")
    assert obtain(api_client, REMOTE_ADDR="10.2.0.1").status_code == 429
    fresh = api_client.post(
        "/api/auth/token/refresh/", {"refresh": refresh}, format="json", REMOTE_ADDR="10.2.0.1"
    )
    assert fresh.status_code == 200


def test_refresh_default_budget_is_not_the_logins(api_client, user):
    """75 clients behind one address refreshing: the seeds' 5 a minute (one
    budget with the logins) locked all out after the fifth."""
    refresh = str(RefreshToken.for_user(user))
    codes = [
        api_client.post("/api/auth/token/refresh/", {"refresh": refresh + "x"}, format="json").status_code
        for _ in range(60)
    ]
    assert codes == [401] * 60
    assert api_client.post("/api/auth/token/refresh/", {"refresh": "x"}, format="json").status_code == 429


# --- behind a trusted proxy ---------------------------------------------------------


def test_behind_one_trusted_proxy_each_client_has_its_own_budget(api_client, user, settings):
    """Every request comes from the proxy's address: with the proxy trusted,
    one attacker's guesses no longer lock out the other clients."""
    settings.TRUSTED_PROXY_HOPS = 1
    proxy = {"REMOTE_ADDR": "10.0.0.5"}
    for i in range(5):
        obtain(
            api_client, username=f"guess{i}", password="wrong", HTTP_X_FORWARDED_FOR="203.0.113.66", **proxy
        )
    assert obtain(api_client, HTTP_X_FORWARDED_FOR="203.0.113.66", **proxy).status_code == 429
    assert obtain(api_client, HTTP_X_FORWARDED_FOR="198.51.100.1", **proxy).status_code == 200


def test_behind_one_trusted_proxy_a_spoofed_entry_changes_nothing(api_client, user, settings):
    settings.TRUSTED_PROXY_HOPS = 1
    proxy = {"REMOTE_ADDR": "10.0.0.5"}
    for i in range(5):
        # The attacker writes a new address each time; the proxy appends the real one.
        xff = f"192.0.2.{i}, 203.0.113.66"
        obtain(api_client, username=f"guess{i}", password="wrong", HTTP_X_FORWARDED_FOR=xff, **proxy)
    assert obtain(api_client, HTTP_X_FORWARDED_FOR="192.0.2.200, 203.0.113.66", **proxy).status_code == 429


def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(api_client, user, settings):
    settings.TRUSTED_PROXY_HOPS = 0
    for i in range(5):
        obtain(api_client, username=f"guess{i}", password="wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    assert obtain(api_client, HTTP_X_FORWARDED_FOR="192.0.2.200").status_code == 429


@pytest.mark.parametrize("xff", ["", "garbage", "1.2.3.4,,", ", ,", "[::1", "1.2.3.4, unknown"])
@pytest.mark.parametrize("hops", [0, 1, 2])
def test_garbage_forwarded_headers_are_never_a_500(api_client, user, settings, xff, hops):
    settings.TRUSTED_PROXY_HOPS = hops
    assert obtain(api_client, HTTP_X_FORWARDED_FOR=xff).status_code == 200


# --- a password change revokes tokens ------------------------------------------------


def test_a_password_change_revokes_refresh_and_access_tokens(api_client, user, tenant_a):
    from conftest import bearer_client
    from emailclient.core.tests.factories import MembershipFactory

    MembershipFactory(tenant=tenant_a, user=user)
    tokens = obtain(api_client).json()
    access = {"HTTP_AUTHORIZATION": f"Bearer {tokens['access']}"}
    assert api_client.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-a", **access).status_code == 200
    stale_client = bearer_client(user, tenant_a)

    user.set_password("a new and different passphrase")
    user.save()

    # The access token, by the middleware's road and by DRF's (no tenant named).
    assert api_client.get("/api/accounts/", HTTP_X_TENANT_ID="tenant-a", **access).status_code == 401
    assert api_client.get("/api/accounts/", **access).status_code == 401
    assert stale_client.get("/api/accounts/").status_code == 401
    refreshed = api_client.post("/api/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 401
    assert refreshed.json()["error"]["code"] == "password_changed"
    verify = api_client.post("/api/auth/token/verify/", {"token": tokens["access"]}, format="json")
    assert verify.status_code == 401
    # The new password's tokens work.
    fresh = obtain(api_client, password="a new and different passphrase").json()
    client = bearer_client(user, tenant_a)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {fresh['access']}", HTTP_X_TENANT_ID="tenant-a")
    assert client.get("/api/accounts/").status_code == 200
    assert (
        api_client.post("/api/auth/token/refresh/", {"refresh": fresh["refresh"]}, format="json").status_code
        == 200
    )


def test_a_token_without_the_password_claim_is_refused(api_client, user):
    """Tokens issued before CHECK_REVOKE_TOKEN was on carry no claim: refused."""
    refresh = RefreshToken.for_user(user)
    del refresh["hash_password"]
    response = api_client.post("/api/auth/token/refresh/", {"refresh": str(refresh)}, format="json")
    assert response.status_code == 401


def test_a_deactivated_users_token_does_not_verify(api_client, user):
    access = obtain(api_client).json()["access"]
    user.is_active = False
    user.save()
    assert api_client.post("/api/auth/token/verify/", {"token": access}, format="json").status_code == 401
