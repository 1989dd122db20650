"""Prometheus metrics (`/metrics`, off unless METRICS_ENABLED).

Two kinds:

- Counted where they happen, in the process they happen in: HTTP requests by
  route and status with their latency (`requestid.RequestIdMiddleware`),
  syncs (runs by result, duration, messages stored, failures by reason; from
  the Celery signals of `mailboxes.tasks.sync_account` below). Gunicorn's
  and Celery's prefork workers are several processes: with
  PROMETHEUS_MULTIPROC_DIR set (it must be, in production, before the
  process starts), each writes its values to files there, and a scrape
  adds them up (prometheus-client's multiprocess mode). Gunicorn's
  `child_exit` hook (deploy/gunicorn.conf.py) and a Celery pool child's
  end add a dead process's counts into aggregate files and delete its own
  (`metrics_files`), so the directory does not grow with recycled workers.
  Nothing is counted while METRICS_ENABLED is off.
- Read at scrape time from the database and the broker, cached for
  METRICS_CACHE_SECONDS so a scrape every few seconds costs one set of
  queries: sends by outcome and the outbox's depth (email_drafts), blob
  bytes by tenant (a SUM over the stored rows, not a walk of the disk), and
  the Celery queues' depth (LLEN on the broker). The database reads go
  through the admin alias (BYPASSRLS): they count across tenants. Their
  cache is shared by every process (Redis), one process reading at a time,
  and each statement is cut off after METRICS_STATEMENT_TIMEOUT: a
  slow sum leaves the database's gauges out of that scrape, logged.

The web's metrics are served by the web at `/metrics`; the worker's by a
small HTTP server in the worker's main process on METRICS_WORKER_PORT
(`worker_metrics_serve`, started from `emailclient.celery`), over its own
multiprocess directory, behind the same token and network checks.
"""

import hmac
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from celery import signals
from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import REGISTRY, Collector

from .metrics_files import multiproc_dir_ensure, process_files_merge

logger = logging.getLogger(__name__)

# Before the first metric: one over a missing directory raises FileNotFoundError
# (in every process, at import); created here, or a clear RuntimeError.
multiproc_dir_ensure()

PREFIX = "emailclient"
SYNC_TASK = "mailboxes.tasks.sync_account"

HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by URL route (the pattern, not the path), method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time from the request's arrival in Django to its answer, by URL route and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SYNC_RUNS = Counter(
    f"{PREFIX}_sync_runs",
    "Account syncs ended, by result (ok, over_quota, failed, waiting, joined, skipped, missing, error).",
    ["result"],
)
SYNC_DURATION = Histogram(
    f"{PREFIX}_sync_duration_seconds",
    "Duration of account sync tasks that ran a sync (ok, over_quota or failed).",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
SYNC_MESSAGES = Counter(f"{PREFIX}_sync_messages", "Messages stored by syncs (new ones).")
SYNC_FAILURES = Counter(
    f"{PREFIX}_sync_failures",
    "Account syncs that failed, by reason (the error's class: AuthenticationFailed, DeadlineExceeded, ...).",
    ["reason"],
)

# --- Counted where it happens ------------------------------------------------------


def request_observed(*, method: str, route: str, status: int, seconds: float) -> None:
    if not settings.METRICS_ENABLED:
        return  # nothing written (in multiprocess mode, no files for nothing)
    method = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    HTTP_LATENCY.labels(route=route, method=method).observe(seconds)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NEW_MESSAGES = re.compile(r"\b(\d+) new\b")
_sync_started: dict[str, float] = {}
_REASON = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def sync_failure_observed(exc: BaseException) -> None:
    """A sync failed for good (or for this run): counted by the error's class,
    a bounded set of names from the code, never the error's text."""
    reason = type(exc).__name__
    SYNC_FAILURES.labels(reason=reason if _REASON.fullmatch(reason) else "other").inc()


@signals.task_prerun.connect(weak=False)
def _sync_started_at(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if task_id and getattr(task, "name", None) == SYNC_TASK:
        _sync_started[task_id] = time.monotonic()


@signals.task_postrun.connect(weak=False)
def _sync_ended(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None, **kwargs: Any
) -> None:
    if getattr(task, "name", None) != SYNC_TASK:
        return
    started = _sync_started.pop(task_id or "", None)
    if state != "SUCCESS" or not isinstance(retval, dict):
        # Raised (counted by `sync_failure_observed`) or a retry queued.
        SYNC_RUNS.labels(result="retry" if state == "RETRY" else "error").inc()
        return
    result = str(retval.get("result", "unknown"))
    SYNC_RUNS.labels(result=result if _REASON.fullmatch(result) else "other").inc()
    if result in ("ok", "over_quota", "failed") and started is not None:
        SYNC_DURATION.observe(time.monotonic() - started)
    match = _NEW_MESSAGES.search(str(retval.get("summary", "")))
    if match:
        SYNC_MESSAGES.inc(int(match.group(1)))


@signals.worker_process_shutdown.connect(weak=False)
def _pool_child_files_merge(**kwargs: Any) -> None:
    """A Celery pool child ending (max_tasks_per_child, autoscale) adds its
    counts to the aggregate files and deletes its own (metrics_files)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        process_files_merge(os.getpid())


# --- Read at scrape time ----------------------------------------------------------------

_OUTCOMES_SQL = "SELECT status, count(*) FROM email_drafts WHERE status <> 'draft' GROUP BY status"
_BLOB_BYTES_SQL = """
SELECT t.slug, COALESCE(m.bytes, 0) + COALESCE(q.bytes, 0) + COALESCE(a.bytes, 0)
FROM tenants t
LEFT JOIN (SELECT tenant_id, sum(size_bytes) AS bytes FROM email_messages GROUP BY tenant_id) m
       ON m.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, sum(size_bytes) AS bytes FROM email_quarantine
           WHERE raw_blob_key <> '' GROUP BY tenant_id) q ON q.tenant_id = t.id
LEFT JOIN (SELECT tenant_id, sum(size_bytes) AS bytes FROM email_draft_attachments GROUP BY tenant_id) a
       ON a.tenant_id = t.id
ORDER BY t.slug
"""
OUTBOX_STATUSES = ("scheduled", "queued", "sending")
# The database's values, shared by every process through Redis (the default
# cache), and the mark of the one process reading them anew.
SHARED_KEY = "metrics:scrape:database"
READING_KEY = "metrics:scrape:database:reading"


def _database_read() -> dict[str, Any]:
    """Sends by status and blob bytes by tenant, each statement cut off after
    METRICS_STATEMENT_TIMEOUT seconds: a scrape must not wait on a big
    table's sum or a lock (the error leaves the gauges out, `_guarded`)."""
    from django.db import connections, transaction

    timeout_ms = max(1, round(settings.METRICS_STATEMENT_TIMEOUT * 1000))
    with transaction.atomic(using="admin"), connections["admin"].cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)])  # SET LOCAL
        cursor.execute(_OUTCOMES_SQL)
        by_status = dict(cursor.fetchall())
        cursor.execute(_BLOB_BYTES_SQL)
        blob_bytes = [(slug, int(total)) for slug, total in cursor.fetchall()]
    return {"at": time.time(), "by_status": by_status, "blob_bytes": blob_bytes}


def database_values() -> dict[str, Any]:
    """The database's values, read at most once per METRICS_CACHE_SECONDS by
    all the processes together: younger ones come from Redis; older ones
    are read by the process that marks itself the reader, the others
    answering with the last ones meanwhile (N scrapers, or N gunicorn
    workers, do not each sum the tables). Without Redis, each reads."""
    from django.core.cache import cache

    try:
        shared: dict[str, Any] | None = cache.get(SHARED_KEY)
        if shared is not None and time.time() - shared["at"] < settings.METRICS_CACHE_SECONDS:
            return shared
        reading = settings.METRICS_STATEMENT_TIMEOUT * 2 + 5  # two statements, then the mark expires
        claimed = cache.add(READING_KEY, os.getpid(), timeout=reading)
    except Exception:
        logger.warning("metrics: the shared cache is not reachable; reading the database", exc_info=True)
        return _database_read()
    if not claimed and shared is not None:
        return shared
    try:
        values = _database_read()
        cache.set(SHARED_KEY, values, timeout=settings.METRICS_CACHE_SECONDS + 60)
    finally:
        if claimed:
            cache.delete(READING_KEY)
    return values


class ScrapeTimeCollector(Collector):
    """Gauges read from the database and the broker when scraped, cached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= settings.METRICS_CACHE_SECONDS:
                self._cached = (now, list(self._read()))
            return list(self._cached[1])

    def _read(self) -> Iterator[Metric]:
        yield from self._guarded("database", self._database)
        yield from self._guarded("broker", self._broker)

    def _guarded(self, source: str, read: Callable[[], list[Metric]]) -> list[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_scrape_source_up", "1 if the source answered this scrape.", labels=["source"]
        )
        try:
            metrics = read()
            up.add_metric([source], 1)
        except Exception:
            logger.warning("metrics: reading the %s failed", source, exc_info=True)
            metrics = []
            up.add_metric([source], 0)
        return [*metrics, up]

    def _database(self) -> list[Metric]:
        values = database_values()
        by_status, blob_bytes = values["by_status"], values["blob_bytes"]
        sends = GaugeMetricFamily(
            f"{PREFIX}_sends",
            "Messages handed to the outbox, by status now (sent, failed, uncertain, cancelled, ...).",
            labels=["outcome"],
        )
        for status in ("scheduled", "queued", "sending", "sent", "failed", "uncertain", "cancelled"):
            sends.add_metric([status], by_status.get(status, 0))
        outbox = GaugeMetricFamily(
            f"{PREFIX}_outbox_depth", "Messages waiting to be sent (scheduled, queued or sending)."
        )
        outbox.add_metric([], sum(by_status.get(status, 0) for status in OUTBOX_STATUSES))
        blobs = GaugeMetricFamily(
            f"{PREFIX}_blob_bytes",
            "Bytes of stored mail by tenant: messages, held quarantined messages and draft attachments.",
            labels=["tenant"],
        )
        for slug, total in blob_bytes:
            blobs.add_metric([slug], total)
        return [sends, outbox, blobs]

    def _broker(self) -> list[Metric]:
        import redis

        depth = GaugeMetricFamily(
            f"{PREFIX}_celery_queue_depth",
            "Tasks waiting in each Celery queue on the broker.",
            labels=["queue"],
        )
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            with client.pipeline(transaction=False) as pipe:
                for queue in settings.METRICS_CELERY_QUEUES:
                    pipe.llen(queue)
                lengths = pipe.execute()
        finally:
            client.close()
        for queue, length in zip(settings.METRICS_CELERY_QUEUES, lengths, strict=True):
            depth.add_metric([queue], length)
        return [depth]


_scrape_time = ScrapeTimeCollector()
_registry_lock = threading.Lock()
_registries: dict[bool, CollectorRegistry] = {}


def registry(*, scrape_time: bool = True) -> CollectorRegistry:
    """What a scrape reads: this process's metrics (or, in multiprocess mode,
    every process's, from PROMETHEUS_MULTIPROC_DIR), and with `scrape_time`
    the ones read from the database and broker (the web's `/metrics` only:
    the worker's server would repeat them)."""
    with _registry_lock:
        if scrape_time not in _registries:
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                built = CollectorRegistry()
                multiprocess.MultiProcessCollector(built)  # type: ignore[no-untyped-call]
            else:
                built = CollectorRegistry()
                built.register(_ThisProcess())
            if scrape_time:
                built.register(_scrape_time)
            _registries[scrape_time] = built
        return _registries[scrape_time]


class _ThisProcess(Collector):
    """The default registry's metrics, for a registry of our own."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(*, scrape_time: bool = True) -> tuple[bytes, str]:
    return generate_latest(registry(scrape_time=scrape_time)), CONTENT_TYPE_LATEST


# --- Access --------------------------------------------------------------------------


def access_allowed(*, authorization: str | None, client: str | None) -> bool:
    """Whether a scrape may read the metrics: every configured condition must
    hold (the bearer token METRICS_TOKEN, the client's address in
    METRICS_ALLOWED_NETWORKS); with neither configured, no one may."""
    token: str = settings.METRICS_TOKEN
    networks: list[str] = settings.METRICS_ALLOWED_NETWORKS
    if not token and not networks:
        return False
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return False
    if networks:
        try:
            address = ipaddress.ip_address(client or "")
        except ValueError:
            return False
        if not any(address in ipaddress.ip_network(net, strict=False) for net in networks):
            return False
    return True


# --- The worker's server --------------------------------------------------------------


def worker_metrics_serve(port: int, address: str = "0.0.0.0") -> threading.Thread:  # noqa: S104
    """Serve the worker's metrics on `port` from a daemon thread of the
    worker's main process (the pool's children write to the multiprocess
    directory), with the same access rules as the web's `/metrics`."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if not settings.METRICS_ENABLED or environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        if not access_allowed(
            authorization=environ.get("HTTP_AUTHORIZATION"), client=environ.get("REMOTE_ADDR")
        ):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"forbidden\n"]
        body, content_type = exposition(scrape_time=False)
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    server = make_server(address, port, app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    logger.info("worker metrics on %s:%s/metrics", address, server.server_port)
    return thread
