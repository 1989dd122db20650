"""One sync of one account, in its own process, for bench/sync_bench.py.

Run by the benchmark as a child process so that its peak memory is the
worker's alone. Prints one JSON line on stdout: the SyncReport, the time
`account_sync()` took, the process's own peak RSS and CPU time, the CPU time
the PostgreSQL server spent meanwhile, and (with --phases) where the wall time
went: a few functions of the sync path are wrapped with timers (exclusive
wall and thread-CPU time per thread: a step's nested steps are subtracted),
which costs about a microsecond a call. No application file is changed.
With --index it then runs the search indexing of the stored messages
(`messages.indexing.search_index_pending`, what the messages.tasks.index_search task
does after a sync) and reports its time separately.

    TEST_DATABASE_NAME=emailclient_bench DJANGO_SETTINGS_MODULE=emailclient.settings.test \
    .venv/bin/python bench/sync_worker.py --tenant T --account A --blobs DIR --ca-file CA \
        [--phases | --profile OUT] [--index]
"""

import argparse
import functools
import json
import os
import re
import resource
import sys
import threading
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
MAIN = "main thread"


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def postgres_cpu_seconds() -> float | None:
    """CPU (user + system) of the local PostgreSQL server so far: every live
    postgres process, plus what the postmaster collected from exited ones
    (a sync may open and close connections, e.g. on a writer thread).
    Server-wide: it counts any other database work running meanwhile."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            head, tail = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1] == "postgres":
            fields = tail.split()
            procs[int(entry.name)] = (int(fields[1]), [int(x) for x in fields[11:15]])
    if not procs:
        return None
    total = 0
    for ppid, (utime, stime, cutime, cstime) in procs.values():
        total += utime + stime
        if ppid not in procs:  # the postmaster: add its reaped children
            total += cutime + cstime
    return total / tick


class PhaseTimers:
    """Exclusive wall time per wrapped function, per thread."""

    def __init__(self):
        self.totals: dict[tuple[str, str], float] = {}
        self.cpu: dict[tuple[str, str], float] = {}
        self.calls: dict[tuple[str, str], int] = {}
        self.local = threading.local()
        self.lock = threading.Lock()

    def wrap(self, name, fn):
        """`name` is a string, or a function of the call's arguments."""
        timers = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            label = name if isinstance(name, str) else name(*args, **kwargs)
            stack = getattr(timers.local, "stack", None)
            if stack is None:
                stack = timers.local.stack = []
            t0, c0 = time.perf_counter(), time.thread_time()
            stack.append([0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
                nested, nested_cpu = stack.pop()
                if stack:
                    stack[-1][0] += elapsed
                    stack[-1][1] += cpu
                thread = threading.current_thread()
                key = (MAIN if thread is threading.main_thread() else f"thread {thread.name}", label)
                with timers.lock:
                    timers.totals[key] = timers.totals.get(key, 0.0) + elapsed - nested
                    timers.cpu[key] = timers.cpu.get(key, 0.0) + cpu - nested_cpu
                    timers.calls[key] = timers.calls.get(key, 0) + 1

        return timed

    def patch(self, owner, attribute: str, name) -> None:
        original = getattr(owner, attribute, None)
        if original is None:  # the application changed: time what is still there
            sys.stderr.write(f"phases: {owner.__name__}.{attribute} not found, not timed\n")
            return
        setattr(owner, attribute, self.wrap(name, original))

    def report(self, total: float) -> list[dict]:
        rows = [
            {
                "thread": thread,
                "step": step,
                "seconds": seconds,
                "cpu_seconds": self.cpu[(thread, step)],
                "calls": self.calls[(thread, step)],
            }
            for (thread, step), seconds in self.totals.items()
        ]
        main = sum(r["seconds"] for r in rows if r["thread"] == MAIN)
        rows.append(
            {
                "thread": MAIN,
                "step": "other (engine, ORM, folders)",
                "seconds": total - main,
                "cpu_seconds": None,
                "calls": 0,
            }
        )
        return sorted(rows, key=lambda r: (r["thread"] != MAIN, r["thread"], -r["seconds"]))


_SQL_WRITE = re.compile(r'\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)', re.IGNORECASE)
_SQL_FROM = re.compile(r'\bFROM\s+"?(\w+)', re.IGNORECASE)


def _sql_label(cursor, sql, *args, **kwargs) -> str:
    """'SQL INSERT email_messages' and the like."""
    text = str(sql)[:2000]
    match = _SQL_WRITE.match(text)
    if match:
        what = f"{match.group(1).split()[0].upper()} {match.group(2)}"
    elif text.lstrip()[:6].upper() == "SELECT" and (found := _SQL_FROM.search(text)):
        what = f"SELECT {found.group(1)}"
    else:
        what = (text.split() or ["?"])[0].upper()
    return f"SQL {what}"


def install_phase_timers() -> PhaseTimers:
    from django.db.backends import utils as db_utils
    from django.db.models.query import QuerySet

    import mailboxes.imap as imap
    import mailboxes.imap.session as imap_session
    import mailboxes.sync.engine as sync
    from messages.blobs import BlobStore

    timers = PhaseTimers()
    timers.patch(imap.ImapSession, "fetch_meta", "IMAP FETCH flags/sizes (network, imaplib)")
    timers.patch(imap.ImapSession, "fetch_full", "IMAP FETCH bodies (network, imaplib)")
    timers.patch(imap_session, "parse_fetch_response", "IMAP response parsing (imapclient)")
    timers.patch(imap_session, "parse_fetch_fast", "IMAP response parsing (fast path)")
    timers.patch(sync, "parse_message", "MIME parsing (parse_message)")
    timers.patch(BlobStore, "put", "blob store (sha256, gzip, write)")
    timers.patch(sync, "assign_threads", "threading (assign_threads, Python)")
    timers.patch(QuerySet, "bulk_create", "ORM bulk_create (Python: build SQL)")
    if hasattr(sync, "copy_rows"):
        timers.patch(sync, "copy_rows", lambda model, rows: f"COPY rows to {model._meta.db_table} (psycopg)")
    pipeline = getattr(sync, "_Pipeline", None)  # the writer thread, if the engine has one
    if pipeline is not None:
        timers.patch(pipeline, "submit", "hand-off to the writer (waits when it lags)")
        timers.patch(pipeline, "__exit__", "wait for the writer to finish")
    timers.patch(db_utils.CursorWrapper, "execute", _sql_label)
    timers.patch(db_utils.CursorWrapper, "executemany", _sql_label)
    return timers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", type=uuid.UUID, required=True)
    parser.add_argument("--account", type=uuid.UUID, required=True)
    parser.add_argument("--blobs", type=Path, required=True, help="BLOB_STORAGE_DIR")
    parser.add_argument("--ca-file", required=True, help="MAIL_TLS_CA_FILE")
    parser.add_argument("--profile", type=Path, help="run account_sync under cProfile, dump stats here")
    parser.add_argument("--phases", action="store_true", help="time the main steps of the sync")
    parser.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval() for the sync (an experiment)"
    )
    parser.add_argument(
        "--index", action="store_true", help="after the sync, time the search indexing of what it stored"
    )
    args = parser.parse_args(argv)

    if os.environ.get("TEST_DATABASE_NAME") != "emailclient_bench":
        parser.error("TEST_DATABASE_NAME must be emailclient_bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "emailclient.settings.test")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.conf import settings

    if settings.DATABASES["default"]["NAME"] != "emailclient_bench":
        raise SystemExit(f"refusing to run against {settings.DATABASES['default']['NAME']}")
    settings.BLOB_STORAGE_DIR = args.blobs
    settings.MAIL_TLS_CA_FILE = args.ca_file

    from mailboxes.sync import account_sync

    phases = install_phase_timers() if args.phases else None
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    pg_before = postgres_cpu_seconds()
    own = resource.getrusage(resource.RUSAGE_SELF)
    started_rss = _vm_hwm_kb()
    t0 = time.perf_counter()
    if args.profile:
        import cProfile
        import pstats

        # cProfile sees one thread: profile every thread the sync starts
        # (e.g. a writer thread) too, and merge the stats. The clock is each
        # thread's CPU time: waits (PostgreSQL, the network, locks) are left
        # out, --phases shows them.
        thread_profiles: list[cProfile.Profile] = []
        thread_run = threading.Thread.run

        def profiled_run(thread):
            profiler = cProfile.Profile(time.thread_time)
            thread_profiles.append(profiler)
            profiler.enable()
            try:
                thread_run(thread)
            finally:
                profiler.disable()

        threading.Thread.run = profiled_run
        profiler = cProfile.Profile(time.thread_time)
        report = profiler.runcall(account_sync, tenant_id=args.tenant, account_id=args.account)
        threading.Thread.run = thread_run
        stats = pstats.Stats(profiler)
        for extra in thread_profiles:
            stats.add(extra)
        stats.dump_stats(str(args.profile))
    else:
        report = account_sync(tenant_id=args.tenant, account_id=args.account)
    seconds = time.perf_counter() - t0
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    pg_after = postgres_cpu_seconds()

    result = {
        "seconds": seconds,
        "folders": report.folders,
        "new": report.new,
        "updated": report.updated,
        "expunged": report.expunged,
        "quarantined": report.quarantined,
        "bodies_fetched": report.bodies_fetched,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vm_hwm_kb": _vm_hwm_kb(),
        "vm_hwm_before_sync_kb": started_rss,
        "cpu_user_s": own_after.ru_utime - own.ru_utime,
        "cpu_sys_s": own_after.ru_stime - own.ru_stime,
        "postgres_cpu_s": pg_after - pg_before if pg_before is not None and pg_after is not None else None,
    }
    if phases is not None:
        result["phases"] = phases.report(seconds)
    if args.index:
        # The sync's rows have no search vector yet (the messages.tasks.index_search
        # task fills it afterwards): time that step on its own.
        from messages.indexing import search_index_pending

        pg_before = postgres_cpu_seconds()
        t0 = time.perf_counter()
        result["indexed"] = search_index_pending(tenant_id=args.tenant)
        result["index_seconds"] = time.perf_counter() - t0
        pg_after = postgres_cpu_seconds()
        result["index_postgres_cpu_s"] = (
            pg_after - pg_before if pg_before is not None and pg_after is not None else None
        )
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
