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
    codes = [obtain(api_client, password="wrong").status_code for _ in range(5)]
    assert codes == [401] * 5
    limited = obtain(api_client)  # even the right password
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    # Another address has its own budget.
    assert obtain(api_client, REMOTE_ADDR="10.9.8.7").status_code == 200


@override_settings(AUTH_RATE_LIMIT="2/m")
def test_rate_is_configurable(api_client, user):
    assert [obtain(api_client).status_code for _ in range(3)] == [200, 200, 429]


def test_refresh_endpoint_is_rate_limited_too(api_client, user):
    codes = [
        api_client.post("/api/auth/token/refresh/", {"refresh": "x"}, format="json").status_code
        for _ in range(6)
    ]
    assert codes == [401] * 5 + [429]
