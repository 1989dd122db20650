import pytest
from django.db import connection, connections

from emailclient.core import views


@pytest.fixture(autouse=True)
def _fresh_checks():
    views.health_checks.clear()
    yield
    views.health_checks.clear()


@pytest.mark.django_db
def test_health_reports_database_and_redis(api_client):
    response = api_client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert {key: body[key] for key in ("status", "service", "checks")} == {
        "status": "healthy",
        "service": "email_service",
        "checks": {"database": "ok", "redis": "ok"},
    }
    # Reported, not part of the status (test_health_celery.py has the details).
    assert set(body) == {"status", "service", "checks", "celery", "periodic_sync"}


@pytest.mark.django_db
def test_health_is_503_naming_redis_when_it_is_down(api_client, settings):
    down = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": down}}
    response = api_client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert response.json()["checks"] == {"database": "ok", "redis": "failing"}


def test_health_is_503_naming_the_database_when_it_is_down(api_client, committed_db):
    connection.close()
    real_port = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = 1  # nothing listens there
    try:
        response = api_client.get("/health")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = real_port
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "failing", "redis": "ok"}


@pytest.mark.django_db(databases=["default", "admin"])
@pytest.mark.parametrize("alias", ["default", "admin"])
def test_connections_run_without_jit(alias):
    """JIT compiled big-tenant searches for 80-90 ms each; settings turn it off."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone() == ("off",)


def test_favicon_is_an_empty_answer_not_a_404(api_client):
    response = api_client.get("/favicon.ico")
    assert response.status_code == 204 and response.content == b""
