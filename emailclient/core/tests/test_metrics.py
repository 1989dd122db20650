"""Prometheus metrics (emailclient.core.metrics): access, labels, the gauges
read at scrape time, the sync counters and the worker's own server."""

import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis
from celery import current_app
from django.conf import settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from compose.tests.factories import DraftAttachmentFactory, DraftFactory
from emailclient.core import metrics
from emailclient.core.tests.celery_worker import CeleryWorker
from emailclient.core.tests.factories import TenantFactory
from mailboxes.tests.conftest import devmail, imap_account, mail_settings, mail_user, mailbox  # noqa: F401
from mailboxes.tests.test_imap_sync import seed
from mailboxes.tests.test_tasks_and_api import run_task
from messages.tests.corpus import corpus_files
from messages.tests.factories import MessageFactory

TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def enabled(settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    settings.METRICS_CACHE_SECONDS = 0
    metrics._scrape_time._cached = None
    yield settings
    metrics._scrape_time._cached = None


def scrape(client, token=TOKEN, **extra):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.get("/metrics", **headers, **extra)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# --- Access ---------------------------------------------------------------------------


def test_metrics_are_a_404_unless_enabled(client, settings):
    settings.METRICS_ENABLED = False
    assert scrape(client).status_code == 404


@pytest.mark.django_db
def test_the_token_is_required(client, enabled):
    assert scrape(client, token=None).status_code == 403
    assert scrape(client, token="wrong").status_code == 403
    response = scrape(client)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")


def test_enabled_without_token_or_network_refuses_everyone(client, enabled):
    enabled.METRICS_TOKEN = ""
    assert scrape(client, token=None).status_code == 403


@pytest.mark.django_db
def test_the_network_allow_list(client, enabled):
    enabled.METRICS_TOKEN = ""
    enabled.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert scrape(client, token=None).status_code == 403  # the test client is 127.0.0.1
    enabled.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "127.0.0.0/8"]
    assert scrape(client, token=None).status_code == 200
    enabled.METRICS_TOKEN = TOKEN  # both configured: both must hold
    assert scrape(client, token=None).status_code == 403
    assert scrape(client).status_code == 200


_NETWORKS_PROBE = (
    "import django; django.setup(); from django.conf import settings; "
    "from emailclient.core.metrics import access_allowed; "
    "print(settings.METRICS_ALLOWED_NETWORKS, access_allowed(authorization=None, client='127.0.0.1'))"
)


def _settings_with_networks(value: str):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", _NETWORKS_PROBE],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "emailclient.settings.test",
            "METRICS_ALLOWED_NETWORKS": value,
        },
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_allowed_networks_may_have_spaces_after_the_commas():
    done = _settings_with_networks("10.0.0.0/8, 127.0.0.1 ,::1/128")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['10.0.0.0/8', '127.0.0.1', '::1/128'] True"


def test_an_invalid_allowed_network_stops_the_start_naming_it():
    done = _settings_with_networks("10.0.0.0/8, 10.0.0.300/32")
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "METRICS_ALLOWED_NETWORKS" in done.stderr and "'10.0.0.300/32'" in done.stderr


def test_metrics_are_not_in_the_tenant_api(client, enabled):
    assert client.get("/api/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code in (401, 404)


# --- Requests --------------------------------------------------------------------------


@pytest.mark.django_db
def test_requests_are_counted_by_route_pattern_and_status(client, client_a, enabled):
    missing = uuid.uuid4()
    client_a.get(f"/api/messages/{missing}")
    client_a.get(f"/api/messages/{uuid.uuid4()}")
    text = scrape(client).content.decode()
    assert str(missing) not in text
    found = samples(text)
    routes = [
        (labels, value)
        for (name, labels), value in found.items()
        if name == "emailclient_http_requests_total"
        and ("status", "404") in labels
        and any(key == "route" and "messages" in val for key, val in labels)
    ]
    assert routes and max(value for _, value in routes) >= 2
    assert any(name == "emailclient_http_request_duration_seconds_bucket" for name, _ in found)


# --- Read at scrape time ------------------------------------------------------------------


def test_sends_outbox_blob_bytes_and_queue_depth(client, enabled, committed_db, tenant_a, tenant_b):
    MessageFactory(
        tenant=tenant_a, folder__tenant=tenant_a, folder__account__tenant=tenant_a, size_bytes=1000
    )
    MessageFactory(tenant=tenant_a, folder__tenant=tenant_a, folder__account__tenant=tenant_a, size_bytes=500)
    MessageFactory(tenant=tenant_b, folder__tenant=tenant_b, folder__account__tenant=tenant_b, size_bytes=70)
    draft = DraftFactory(account__tenant=tenant_b, status="queued")
    DraftAttachmentFactory(draft=draft, size_bytes=30)
    DraftFactory(account__tenant=tenant_a, status="sent")
    DraftFactory(account__tenant=tenant_a, status="sent")
    DraftFactory(account__tenant=tenant_a, status="uncertain")
    DraftFactory(account__tenant=tenant_b, status="scheduled")
    DraftFactory(account__tenant=tenant_b, status="draft")
    TenantFactory(slug="empty-tenant")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("celery")
    broker.rpush("celery", "{}", "{}", "{}")
    try:
        found = samples(scrape(client).content.decode())
    finally:
        broker.delete("celery")

    assert found[("emailclient_blob_bytes", (("tenant", "tenant-a"),))] == 1500
    assert found[("emailclient_blob_bytes", (("tenant", "tenant-b"),))] == 100
    assert found[("emailclient_blob_bytes", (("tenant", "empty-tenant"),))] == 0
    assert found[("emailclient_sends", (("outcome", "sent"),))] == 2
    assert found[("emailclient_sends", (("outcome", "uncertain"),))] == 1
    assert found[("emailclient_sends", (("outcome", "failed"),))] == 0
    assert found[("emailclient_outbox_depth", ())] == 2  # queued and scheduled
    assert found[("emailclient_celery_queue_depth", (("queue", "celery"),))] == 3
    assert found[("emailclient_scrape_source_up", (("source", "database"),))] == 1


def test_scrape_time_values_are_cached(client, enabled, committed_db, tenant_a):
    enabled.METRICS_CACHE_SECONDS = 60
    DraftFactory(account__tenant=tenant_a, status="sent")
    first = samples(scrape(client).content.decode())
    DraftFactory(account__tenant=tenant_a, status="sent")
    second = samples(scrape(client).content.decode())
    assert first[("emailclient_sends", (("outcome", "sent"),))] == 1
    assert second[("emailclient_sends", (("outcome", "sent"),))] == 1
    enabled.METRICS_CACHE_SECONDS = 0
    third = samples(scrape(client).content.decode())
    assert third[("emailclient_sends", (("outcome", "sent"),))] == 2


def test_the_database_values_are_shared_by_the_processes(enabled, committed_db, tenant_a):
    """Two collectors, as in two gunicorn workers: the second takes the
    first's values from Redis and sends no query."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    enabled.METRICS_CACHE_SECONDS = 60
    DraftFactory(account__tenant=tenant_a, status="sent")
    first = {family.name: family for family in metrics.ScrapeTimeCollector().collect()}
    DraftFactory(account__tenant=tenant_a, status="sent")
    with CaptureQueriesContext(connections["admin"]) as queries:
        second = {family.name: family for family in metrics.ScrapeTimeCollector().collect()}
    assert len(queries) == 0
    sent = [
        [sample.value for sample in read["emailclient_sends"].samples if sample.labels["outcome"] == "sent"]
        for read in (first, second)
    ]
    assert sent == [[1], [1]]


def test_while_one_process_reads_the_others_answer_with_the_last_values(enabled, committed_db, tenant_a):
    from django.core.cache import cache
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    DraftFactory(account__tenant=tenant_a, status="sent")
    assert metrics.database_values()["by_status"] == {"sent": 1}
    DraftFactory(account__tenant=tenant_a, status="sent")
    assert cache.add(metrics.READING_KEY, 1, timeout=30)  # another process reads them now
    with CaptureQueriesContext(connections["admin"]) as queries:
        assert metrics.database_values()["by_status"] == {"sent": 1}  # stale, not read again
    assert len(queries) == 0
    cache.delete(metrics.READING_KEY)
    assert metrics.database_values()["by_status"] == {"sent": 2}


def test_a_scrape_waits_no_longer_than_the_statement_timeout(client, enabled, committed_db, caplog):
    """A table locked (a migration, a VACUUM FULL) or a sum too slow: the
    statement is cancelled, the database's gauges are left out, logged."""
    import threading

    import psycopg
    from django.db import connections

    enabled.METRICS_STATEMENT_TIMEOUT = 0.3
    owner = connections["owner"].settings_dict
    locker = psycopg.connect(host=owner["HOST"], port=owner["PORT"], dbname=owner["NAME"], user=owner["USER"])
    locker.execute("LOCK TABLE email_drafts IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(8, locker.commit)
    release.start()
    try:
        started = time.monotonic()
        response = scrape(client)
        elapsed = time.monotonic() - started
    finally:
        release.cancel()
        locker.commit()
        locker.close()
    assert response.status_code == 200
    assert elapsed < 5
    found = samples(response.content.decode())
    assert found[("emailclient_scrape_source_up", (("source", "database"),))] == 0
    assert found[("emailclient_scrape_source_up", (("source", "broker"),))] == 1
    assert not any(name == "emailclient_sends" for name, _ in found)
    assert any("metrics: reading the database failed" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_a_broker_that_does_not_answer_is_reported_not_a_500(client, enabled):
    enabled.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = scrape(client)
    assert response.status_code == 200
    found = samples(response.content.decode())
    assert found[("emailclient_scrape_source_up", (("source", "broker"),))] == 0


# --- Syncs, and the worker's server ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, token: str | None) -> tuple[int, str]:
    assert url.startswith("http://127.0.0.1:")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  (http on loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_a_workers_syncs_are_counted_and_served_on_its_port(committed_db, tmp_path, monkeypatch):
    """A real prefork worker: its child runs the task, its main process
    serves the counts it wrote to the multiprocess directory."""
    port = _free_port()
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
    worker = CeleryWorker(
        tmp_path,
        "metrics",
        {"METRICS_ENABLED": True, "METRICS_WORKER_PORT": port, "METRICS_TOKEN": TOKEN},
    )
    try:
        worker.wait_ready()
        result = current_app.send_task(
            "mailboxes.tasks.sync_account",
            kwargs={"tenant_id": str(uuid.uuid4()), "account_id": str(uuid.uuid4())},
        )
        assert result.get(timeout=30) == {"result": "missing"}
        url = f"http://127.0.0.1:{port}/metrics"
        assert _get(url, None)[0] == 403
        deadline = time.monotonic() + 10
        while True:
            status, text = _get(url, TOKEN)
            if 'emailclient_sync_runs_total{result="missing"} 1.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        worker.kill()
    assert status == 200
    assert 'emailclient_sync_runs_total{result="missing"} 1.0' in text, text[-2000:]
    assert "emailclient_blob_bytes" not in text  # the web's /metrics serves those


def test_sync_failures_are_counted_by_the_errors_class():
    from mailboxes.imap import AuthenticationFailed

    def value():
        return (
            REGISTRY.get_sample_value("emailclient_sync_failures_total", {"reason": "AuthenticationFailed"})
            or 0
        )

    before = value()
    metrics.sync_failure_observed(AuthenticationFailed("the server refused the login"))
    assert value() == before + 1


@pytest.mark.django_db
def test_a_sync_against_dovecot_counts_its_run_duration_and_messages(imap_account, mailbox):  # noqa: F811
    seed(mailbox, {"INBOX": corpus_files("notmuch", "threading")[:5]})

    def value(name, labels=None):
        return REGISTRY.get_sample_value(name, labels or {}) or 0

    runs, durations, stored = (
        value("emailclient_sync_runs_total", {"result": "ok"}),
        value("emailclient_sync_duration_seconds_count"),
        value("emailclient_sync_messages_total"),
    )
    assert run_task(imap_account)["result"] == "ok"
    assert value("emailclient_sync_runs_total", {"result": "ok"}) == runs + 1
    assert value("emailclient_sync_duration_seconds_count") == durations + 1
    assert value("emailclient_sync_messages_total") == stored + 5


# --- Multiprocess files -------------------------------------------------------------

_CHILD = """
import os, sys
from prometheus_client import Counter, Histogram
c = Counter("t_requests", "r", ["route"])
h = Histogram("t_latency", "l", buckets=(0.1, 1.0))
for _ in range(int(sys.argv[1])):
    c.labels(route="a").inc()
    h.observe(0.5)
print(os.getpid())
"""


def _child(directory, count: int) -> int:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(count)],
        env={**__import__("os").environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def _multiprocess_samples(directory) -> dict:
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    found = {}
    for family in registry.collect():
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_a_dead_process_files_are_merged_and_deleted(tmp_path):
    from emailclient.core.metrics_files import orphans_merge, process_files_merge

    pids = [_child(tmp_path, n) for n in (3, 4, 5)]
    before = _multiprocess_samples(tmp_path)
    assert before[("t_requests_total", (("route", "a"),))] == 12
    assert len(list(tmp_path.glob("*_[0-9]*.db"))) == 6

    assert process_files_merge(pids[0], str(tmp_path)) == 2
    assert process_files_merge(pids[0], str(tmp_path)) == 0  # twice: nothing more
    assert orphans_merge(str(tmp_path)) == 4
    names = sorted(p.name for p in tmp_path.glob("*.db"))
    assert names == ["counter_aggregate.db", "histogram_aggregate.db"]
    assert _multiprocess_samples(tmp_path) == before
    after = _multiprocess_samples(tmp_path)
    assert after[("t_latency_bucket", (("le", "1.0"),))] == 12
    assert after[("t_latency_count", ())] == 12

    # More processes come and go: still two files, sums right.
    for n in (1, 2):
        process_files_merge(_child(tmp_path, n), str(tmp_path))
    assert len(list(tmp_path.glob("*.db"))) == 2
    assert _multiprocess_samples(tmp_path)[("t_requests_total", (("route", "a"),))] == 15


def test_gunicorn_child_exit_merges_the_worker_files(tmp_path, monkeypatch):
    import importlib.util
    import types
    from pathlib import Path

    conf = Path(settings.BASE_DIR) / "deploy" / "gunicorn.conf.py"
    spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", conf)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pid = _child(tmp_path, 2)
    module.child_exit(None, types.SimpleNamespace(pid=pid))
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_aggregate.db", "histogram_aggregate.db"]


_ENSURE = "from emailclient.core.metrics_files import multiproc_dir_ensure as e; e()\n"


def test_a_missing_multiprocess_directory_is_created(tmp_path):
    import subprocess
    import sys

    directory = tmp_path / "not" / "there"
    subprocess.run(
        [sys.executable, "-c", _ENSURE + _CHILD, "1"],
        env={**__import__("os").environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        check=True,
        capture_output=True,
        cwd=settings.BASE_DIR,
    )
    assert directory.is_dir()
    assert len(list(directory.glob("counter_*.db"))) == 1


def test_nothing_is_observed_while_metrics_are_off(settings):
    settings.METRICS_ENABLED = False
    labels = {"route": "off-route", "method": "GET", "status": "200"}
    before = REGISTRY.get_sample_value("emailclient_http_requests_total", labels)
    metrics.request_observed(method="GET", route="off-route", status=200, seconds=0.1)
    assert REGISTRY.get_sample_value("emailclient_http_requests_total", labels) == before
    settings.METRICS_ENABLED = True
    metrics.request_observed(method="GET", route="off-route", status=200, seconds=0.1)
    assert REGISTRY.get_sample_value("emailclient_http_requests_total", labels) == (before or 0) + 1
