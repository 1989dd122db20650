import pytest
from django.core.management import call_command


def test_openapi_schema_generates_without_warnings(tmp_path):
    # --fail-on-warn: an untyped parameter or an unknown authenticator fails here.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    text = (tmp_path / "schema.yml").read_text()
    assert "/api/accounts/{id}/" in text
    assert "X-Tenant-ID" in text
    assert "jwtAuth" in text


@pytest.mark.django_db
def test_schema_and_docs_are_served(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "password" in schema.json()["components"]["schemas"]["AccountInputRequest"]["properties"]
    assert "password" not in schema.json()["components"]["schemas"]["AccountOutput"]["properties"]
    assert api_client.get("/api/docs/").status_code == 200
