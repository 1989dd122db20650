"""Prometheus' multiprocess files (PROMETHEUS_MULTIPROC_DIR), kept bounded.

prometheus-client writes one `counter_<pid>.db` and `histogram_<pid>.db` per
process and never removes them (`mark_process_dead` only drops live gauges'),
so every recycled gunicorn worker (max_requests) or Celery pool child left two
files behind: a scrape reads every file (4,000 files: 16.9 s) and the tmpfs
grows until the container's memory is full. A dead process's counts are
added into `counter_aggregate.db` / `histogram_aggregate.db` (the same
format, so the collector reads them as one more process) and its files are
deleted. Adding raw values key by key is exact: both hold per-key sums
(histograms their buckets uncumulated, `_sum` and `_count`).

No Django here: gunicorn's arbiter calls it from `child_exit`.
"""

import fcntl
import glob
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict

ENV = "PROMETHEUS_MULTIPROC_DIR"
MERGED_TYPES = ("counter", "histogram")
AGGREGATE = "aggregate"
_LOCK_FILE = ".merge.lock"


def multiproc_dir_ensure() -> str | None:
    """Create PROMETHEUS_MULTIPROC_DIR if it is set and missing (a metric
    created over a missing directory raises in every process at import);
    raise a RuntimeError naming it if it cannot be created."""
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"{ENV}={path!r} is missing and cannot be created: {exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise RuntimeError(f"{ENV}={path!r} is not a writable directory")
    return path


@contextmanager
def _merge_lock(path: str) -> Iterator[None]:
    # The arbiter merges one child at a time, but Celery's children merge
    # their own files when they exit, perhaps several at once.
    with open(os.path.join(path, _LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def process_files_merge(pid: int, path: str | None = None) -> int:
    """Add a dead process's counter and histogram values into the aggregate
    files and delete its files; mark its live gauges dead. Returns the
    number of files merged."""
    path = path or os.environ.get(ENV)
    if not path or not os.path.isdir(path):
        return 0
    merged = 0
    with _merge_lock(path):
        for typ in MERGED_TYPES:
            source = os.path.join(path, f"{typ}_{pid}.db")
            try:
                values = list(MmapedDict.read_all_values_from_file(source))
            except FileNotFoundError:
                continue
            aggregate = MmapedDict(os.path.join(path, f"{typ}_{AGGREGATE}.db"))
            try:
                now = time.time()
                for key, value, _timestamp, _pos in values:
                    # Zeros too: a histogram's empty buckets are still shown.
                    total, _ = aggregate.read_value(key)
                    aggregate.write_value(key, total + value, now)
            finally:
                aggregate.close()
            # A scrape between the write above and this unlink counts the
            # process twice for that instant; the other order would show a
            # drop (a counter reset to Prometheus) instead.
            os.unlink(source)
            merged += 1
    multiprocess.mark_process_dead(pid, path)
    return merged


def orphans_merge(path: str | None = None) -> int:
    """Merge the files of every pid that no longer runs (e.g. after an
    arbiter restart missed a child_exit). Returns the number of files merged."""
    path = path or os.environ.get(ENV)
    if not path or not os.path.isdir(path):
        return 0
    pids = set()
    for typ in MERGED_TYPES:
        for name in glob.glob(os.path.join(path, f"{typ}_*.db")):
            suffix = os.path.basename(name)[len(typ) + 1 : -3]
            if suffix.isdigit():
                pids.add(int(suffix))
    merged = 0
    for pid in sorted(pids):
        if not _alive(pid):
            merged += process_files_merge(pid, path)
    return merged


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
