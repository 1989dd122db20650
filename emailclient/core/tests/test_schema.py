import re

import pytest
from django.core.management import call_command

from emailclient.core.tests.test_routes import api_routes

# The schema's own pages are not operations of the API.
NOT_IN_SCHEMA = {"/api/schema", "/api/docs", "/api/redoc"}


def test_openapi_schema_generates_without_warnings(tmp_path):
    # --fail-on-warn: an untyped parameter or an unknown authenticator fails here.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    text = (tmp_path / "schema.yml").read_text()
    assert "/api/accounts/{id}:" in text
    assert "X-Tenant-ID" in text
    assert "jwtAuth" in text


@pytest.mark.django_db
def test_schema_and_docs_are_served(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "password" in schema.json()["components"]["schemas"]["AccountInputRequest"]["properties"]
    assert "password" not in schema.json()["components"]["schemas"]["AccountOutput"]["properties"]
    assert api_client.get("/api/docs/").status_code == 200
    assert api_client.get("/api/docs").status_code == 200


@pytest.mark.django_db
def test_the_schema_lists_every_route_once_without_its_trailing_slash(api_client):
    """Routes answer with and without the slash; the schema names each once,
    in the form without it (what reverse() gives)."""
    response = api_client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    paths = set(response.json()["paths"])

    for path in paths:
        assert not path.endswith("/"), path
        assert "?" not in path and "^" not in path and "\\" not in path, path
    # drf-spectacular names a router's `pk` after the model field, `id`.
    routes = {re.sub(r"\{pk\}", "{id}", route.template) for route in api_routes()}
    assert paths == routes - NOT_IN_SCHEMA
