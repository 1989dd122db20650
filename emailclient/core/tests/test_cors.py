"""A browser front-end on another origin calls the API: the origins in
CORS_ALLOWED_ORIGINS may, every other may not, and nothing is allowed by
default."""

import pytest

from accounts.tests.factories import EmailAccountFactory

pytestmark = pytest.mark.django_db

ALLOWED = "https://crm.example.com"


@pytest.fixture
def allowed_origin(settings):
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED]


def preflight(client, origin: str, path: str = "/api/accounts/"):
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type, x-tenant-id",
    )


@pytest.mark.usefixtures("allowed_origin")
def test_an_allowed_origin_passes_the_preflight_and_reads_the_answer(api_client, client_a, tenant_a, user_a):
    account = EmailAccountFactory(tenant=tenant_a, user=user_a)

    response = preflight(api_client, ALLOWED)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ALLOWED
    assert set(response["Access-Control-Allow-Methods"].split(", ")) >= {"GET", "POST", "PATCH", "DELETE"}
    assert {"authorization", "content-type", "x-tenant-id"} <= set(
        response["Access-Control-Allow-Headers"].split(", ")
    )
    assert "Access-Control-Allow-Credentials" not in response

    response = client_a.get("/api/accounts/", HTTP_ORIGIN=ALLOWED)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ALLOWED
    assert "origin" in response["Vary"].lower()
    assert [item["id"] for item in response.json()["results"]] == [str(account.id)]


@pytest.mark.usefixtures("allowed_origin")
@pytest.mark.parametrize(
    "origin", ["https://evil.example.com", "http://crm.example.com", "https://crm.example.com.evil"]
)
def test_another_origin_gets_no_cors_headers(api_client, client_a, origin):
    response = preflight(api_client, origin)
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Headers" not in response

    response = client_a.get("/api/accounts/", HTTP_ORIGIN=origin)
    assert "Access-Control-Allow-Origin" not in response


def test_no_origin_is_allowed_by_default(api_client, client_a):
    response = preflight(api_client, ALLOWED)
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Origin" not in client_a.get("/api/accounts/", HTTP_ORIGIN=ALLOWED)


@pytest.mark.usefixtures("allowed_origin")
def test_cors_covers_the_api_only(api_client):
    """The admin and the docs are same-origin pages: no CORS there."""
    assert "Access-Control-Allow-Origin" not in preflight(api_client, ALLOWED, path="/admin/login/")
