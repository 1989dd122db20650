"""Gunicorn settings for the web role (`deploy/entrypoint.sh web`).

Each value can be changed from the environment; command-line flags and
GUNICORN_CMD_ARGS still override this file. Gunicorn silently ignores names it
does not know, so deploy/validate.sh checks every name here against it.
"""

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _default_workers() -> int:
    # CPUs this process may run on (honours cpusets; os.cpu_count() would report
    # the whole host). Capped because each worker holds up to `threads`
    # connections per database alias: 8 workers x 4 threads = 32, within
    # PostgreSQL's default max_connections of 100 alongside Celery.
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(2 * cores + 1, 8)


bind = [f"0.0.0.0:{_env_int('PORT', 8000)}"]
workers = _env_int("WEB_CONCURRENCY", _default_workers())
# Threads let a worker overlap requests that wait on PostgreSQL or Redis.
worker_class = "gthread"
threads = _env_int("GUNICORN_THREADS", 4)
# A worker takes no more connections than it has threads: gthread's default
# (1,000) lets one worker accept, and queue behind its busy threads, the
# connections an idle worker could serve. Measured with bench/load_bench.py
# (50 connections, folder pages, 2 CPUs): p99 1.6 s -> 1.0 s at the same
# throughput (~100 req/s).
worker_connections = threads

# A request running longer than this gets its worker killed and restarted.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
# Time in-flight requests get to finish on SIGTERM. Docker kills after its
# stop_grace_period (10s unless set; docker-compose.yml gives web 30s).
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 25)
# Idle keep-alive to clients that keep connections (the stack's nginx opens
# one per request, deploy/nginx); a proxy that reuses them must close its own
# idle ones sooner, or it may reuse a connection gunicorn is closing.
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)

# Recycle workers now and then to bound slow leaks; the jitter keeps them from
# all restarting at once.
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 1000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 100)

# Worker heartbeat files on tmpfs: a disk-backed /tmp in a container can stall
# the heartbeat and get healthy workers killed. Gunicorn creates them with
# mkstemp and unlinks them at once, so a shared directory is safe.
worker_tmp_dir = "/dev/shm"  # noqa: S108

# Logs to the container's stdout/stderr. The access line carries the method
# and the path but neither headers (bearer tokens) nor the query string:
# that holds signed attachment URLs' tokens and what users search for
# (`q=`); %(M)s is duration in ms.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'

# Which peers may set X-Forwarded-* for gunicorn comes from FORWARDED_ALLOW_IPS
# (gunicorn reads it itself). Django's HTTPS detection reads X-Forwarded-Proto
# directly (SECURE_PROXY_SSL_HEADER), so the proxy in front must always set it.


# Prometheus multiprocess mode (emailclient.core.metrics): each worker writes its
# counts to PROMETHEUS_MULTIPROC_DIR; a dead worker's counter and histogram
# files are added into aggregate files and deleted (emailclient.core.metrics_files:
# recycled workers otherwise leave two files each, slowing every scrape and
# filling the tmpfs). The directory must be empty when gunicorn starts (a tmpfs,
# or emptied by the entrypoint).
def child_exit(server, worker):
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # set by compose (web), not by .env
        _metrics_files().process_files_merge(worker.pid)


def _metrics_files():
    # Loaded by its path: importing the `emailclient` package would load Celery
    # and the metrics in the arbiter (and give it files of its own).
    import importlib.util
    import sys

    module = sys.modules.get("_emailclient_metrics_files")
    if module is None:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, os.pardir, "emailclient", "core", "metrics_files.py")
        spec = importlib.util.spec_from_file_location("_emailclient_metrics_files", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["_emailclient_metrics_files"] = module
    return module
