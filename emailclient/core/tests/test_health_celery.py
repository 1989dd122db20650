"""/health's report of the Celery workers and the periodic syncs; /health/ready
and /health/live."""

from datetime import timedelta

import pytest
from celery import current_app
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from emailclient.core import views
from emailclient.core.cache import redis_client
from emailclient.core.tests.celery_worker import CeleryWorker

DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture(autouse=True)
def _fresh_health_caches():
    for cached in (views.health_checks, views.celery_workers, views.periodic_sync):
        cached.clear()
    yield
    for cached in (views.health_checks, views.celery_workers, views.periodic_sync):
        cached.clear()


class QuickSyncScheduler(DatabaseScheduler):
    """Writes its runs back every 10 s (django-celery-beat's: 180 s)."""

    sync_every = 10


def test_health_reports_a_running_worker(api_client, committed_db, tmp_path):
    worker = CeleryWorker(tmp_path, "health", {})
    try:
        worker.wait_ready()
        body = api_client.get("/health").json()
    finally:
        worker.kill()
    assert body["status"] == "healthy"
    assert body["celery"] == {"status": "ok", "workers": 1}


@pytest.mark.django_db
def test_health_says_no_worker_answered_and_stays_healthy(api_client, settings):
    settings.HEALTH_CELERY_PING_TIMEOUT = 0.2
    response = api_client.get("/health")
    assert response.status_code == 200
    assert response.json()["celery"] == {"status": "no_workers", "workers": 0}


@pytest.mark.django_db
def test_a_flood_of_health_checks_pings_the_workers_once(api_client, settings, monkeypatch):
    settings.HEALTH_CELERY_PING_TIMEOUT = 0.2
    pings = []
    real_ping = current_app.control.ping

    def counting_ping(*args, **kwargs):
        pings.append(1)
        return real_ping(*args, **kwargs)

    monkeypatch.setattr(current_app.control, "ping", counting_ping)
    for _ in range(20):
        assert api_client.get("/health").status_code == 200
    assert len(pings) == 1


@pytest.mark.django_db
def test_health_reports_the_oldest_overdue_periodic_sync(api_client):
    every, _ = IntervalSchedule.objects.get_or_create(every=300, period=IntervalSchedule.SECONDS)
    now = timezone.now()
    sync = "mailboxes.tasks.sync_account"
    PeriodicTask.objects.create(
        name="on-time", task=sync, interval=every, last_run_at=now - timedelta(seconds=100)
    )
    PeriodicTask.objects.create(
        name="late", task=sync, interval=every, last_run_at=now - timedelta(seconds=900)
    )
    PeriodicTask.objects.create(
        name="later-but-off",
        task="mailboxes.tasks.sync_account",
        interval=every,
        last_run_at=now - timedelta(days=2),
        enabled=False,
    )
    PeriodicTask.objects.create(
        name="not-a-sync",
        task="compose.tasks.dispatch_due",
        interval=every,
        last_run_at=now - timedelta(days=1),
    )
    report = api_client.get("/health").json()["periodic_sync"]
    assert report["overdue"] == 1
    assert 590 <= report["oldest_overdue_seconds"] <= 620  # due 600 s ago (900 - 300)


@pytest.mark.django_db
def test_a_sync_beat_ran_but_has_not_written_back_is_not_overdue(api_client, settings):
    """Beat writes a run's last_run_at to the database only on its next sync
    of the schedule (every 180 s): until then a sync that ran looks due."""
    every, _ = IntervalSchedule.objects.get_or_create(every=300, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="ran-not-written",
        task="mailboxes.tasks.sync_account",
        interval=every,
        last_run_at=timezone.now() - timedelta(seconds=500),  # due 200 s ago
    )
    assert api_client.get("/health").json()["periodic_sync"] == {"overdue": 0, "oldest_overdue_seconds": 0}
    # The grace follows the scheduler's write-back period, plus HEALTH_SYNC_OVERDUE_GRACE.
    settings.CELERY_BEAT_SCHEDULER = f"{__name__}:QuickSyncScheduler"
    views.periodic_sync.clear()
    report = api_client.get("/health").json()["periodic_sync"]
    assert report["overdue"] == 1 and 195 <= report["oldest_overdue_seconds"] <= 215


@pytest.mark.django_db
def test_nothing_overdue(api_client):
    assert api_client.get("/health").json()["periodic_sync"] == {"overdue": 0, "oldest_overdue_seconds": 0}


@pytest.mark.django_db
def test_ready_checks_database_and_redis(api_client, settings):
    response = api_client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": DOWN}}
    views.health_checks.clear()
    response = api_client.get("/health/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "checks": {"database": "ok", "redis": "failing"}}


@pytest.mark.django_db
def test_a_flood_of_health_checks_reads_the_database_once_and_opens_no_redis_connection(
    api_client, settings, monkeypatch
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from redis.connection import Connection

    connects = []  # sockets opened to Redis
    real_connect = Connection._connect

    def counting_connect(self):
        connects.append(1)
        return real_connect(self)

    settings.HEALTH_CELERY_PING_TIMEOUT = 0.2
    # Read before: the Celery ping's own broker connections are not counted.
    views.celery_workers.get()
    views.periodic_sync.get()
    redis_client().ping()  # the shared client's connection, if not yet made
    monkeypatch.setattr(Connection, "_connect", counting_connect)
    with CaptureQueriesContext(connection) as queries:
        for path in ["/health/ready", "/health"] * 10:
            assert api_client.get(path).status_code == 200
    assert [query["sql"] for query in queries].count("SELECT 1") == 1
    assert connects == []


def test_live_does_no_io(api_client, settings):
    """No database mark: a query would fail the test."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # not asked
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = api_client.get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "alive"}
    assert response["X-Request-ID"]
