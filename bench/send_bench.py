#!/usr/bin/env python3
"""Send benchmark: the outbox against Python's smtplib, on a local SMTP sink.

One run:

1. creates and migrates its own database, `emailclient_bench_send` (test
   settings with TEST_DATABASE_NAME=emailclient_bench_send; never the test
   or dev database), with a tenant, a member and their account: IMAP on a
   throwaway Dovecot (deploy/devmail, for the Sent copies), SMTP on the sink;
2. starts the sink in a child process: aiosmtpd with STARTTLS (the devmail
   certificate) and AUTH, recording the Message-ID of each message it takes;
3. direct: smtplib sends N messages (built by `compose.mime`, the same
   sender, recipient, subject and body as the API's) over ONE connection,
   STARTTLS and AUTH once: the rate a single client can push into the sink
   (the median of --direct-runs runs: one run swings 3x on a shared machine);
4. outbox, in two phases. Queue: gunicorn (test settings, this database)
   runs, no worker yet; client threads POST the same N messages to
   `POST /api/compose/send` (202: queued): the API's latency with the
   outbox idle. Drain: Celery workers start and deliver them while a probe
   client POSTs more sends (--probe-requests, one every --probe-interval):
   the API's latency while the outbox drains. The outbox works as in
   production: a task drains the account over one SMTP connection
   (STARTTLS, certificate check, AUTH), each message claimed under its
   send lock and its "data" phase committed before the body, its outcome
   and audit entry recorded, its Sent copy appended over IMAP, a sync
   queued: every guarantee of the outbox kept. The outbox's rate is the
   items sent over the time from the first claim by a worker to the last
   `sent` (the database's timestamps: no worker start-up in it);
5. checks exactly once: as many deliveries at the sink, distinct
   Message-IDs, items `sent` and copies in the Sent folder as items queued;
6. prints the figures, the ratio outbox/direct against the target (>= 1/3)
   and the API's p95 while draining against its target (< 50 ms);
   optionally writes JSON;
7. stops everything and drops the database (unless --keep).

    .venv/bin/python bench/send_bench.py                      # 2,000 messages
    .venv/bin/python bench/send_bench.py --messages 500 --workers 4 --json out.json

Must run as root (Dovecot). The API's rate limits are raised for the run
(COMPOSE_RATE_LIMIT_USER/TENANT): this measures throughput, not the limiter.
"""

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "deploy" / "devmail"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchdb  # noqa: E402

BENCH_DB = "emailclient_bench_send"
BENCH_REDIS = "redis://127.0.0.1:6379/9"
SETTINGS = "emailclient.settings.test"
MAIL_USER = "bench"
MAIL_PASSWORD = "bench-password"  # noqa: S105 - a throwaway local Dovecot user
SMTP_USER, SMTP_PASSWORD = "bench-smtp", "bench-smtp-password"
RECIPIENT = "Reader <reader@example.net>"

TARGET_RATIO = 1 / 3
TARGET_API_P95_MS = 50.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- The sink (a child process: `send_bench.py --sink ...`) ----------------------------


def sink_main(port: int, cert: str, key: str, record: str) -> None:
    """aiosmtpd with STARTTLS and AUTH; appends each message's Message-ID
    to `record` (one line each) before answering 250."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    message_id = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
    out = open(record, "ab", buffering=0)  # noqa: SIM115 - open for the process's life

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            data = envelope.original_content or b""
            head = data[: data.find(b"\r\n\r\n") + 2]
            found = message_id.search(head)
            out.write((found.group(1) if found else b"<none>") + b"\n")
            return "250 2.0.0 Ok"

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        server_hostname="sink.bench",
        tls_context=tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
        data_size_limit=64 * 1024 * 1024,
    )
    import logging

    logging.getLogger("mail.log").setLevel(logging.ERROR)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    controller.stop()


def sink_ids(record: Path) -> list[bytes]:
    try:
        return record.read_bytes().splitlines()
    except FileNotFoundError:
        return []


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited (code {process.returncode})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port}") from None
            time.sleep(0.1)


# --- Django and the database -----------------------------------------------------------


def bench_environment(ca_file: Path) -> dict[str, str]:
    """What the workers, gunicorn and this process run with."""
    return {
        "TEST_DATABASE_NAME": BENCH_DB,  # forced: never the test or dev database
        "TEST_REDIS_URL": BENCH_REDIS,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "MAIL_TLS_CA_FILE": str(ca_file),
        "COMPOSE_RATE_LIMIT_USER": "1000000/m",
        "COMPOSE_RATE_LIMIT_TENANT": "1000000/m",
    }


def django_setup(environment: dict[str, str]):
    os.environ.update(environment)
    return benchdb.django_settings(BENCH_DB, SETTINGS)


def create_account(devmail, smtp_port: int, save_sent_copy: bool):
    """A tenant, a member, their account (IMAP on devmail, SMTP on the sink)
    and an access token for the API."""
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts.models import EmailAccount
    from emailclient.core.crypto import encrypt_secret
    from emailclient.core.models import Tenant, TenantMembership
    from emailclient.core.tenancy import tenant_scope

    tenant = Tenant.objects.create(slug="bench", name="Bench")
    user = get_user_model().objects.create_user(username="bench", password="bench-web-password")  # noqa: S106
    with tenant_scope(tenant.id):
        TenantMembership.objects.create(tenant=tenant, user=user, role="member")
        account = EmailAccount.objects.create(
            tenant=tenant,
            user=user,
            account_name="Bench Sender",
            email_address="bench@example.com",
            protocol="imap",
            hostname="127.0.0.1",
            port=devmail.imap_port,
            encryption="starttls",
            username=MAIL_USER,
            password_encrypted=encrypt_secret(MAIL_PASSWORD),
            smtp_hostname="127.0.0.1",
            smtp_port=smtp_port,
            smtp_encryption="starttls",
            smtp_username=SMTP_USER,
            smtp_password_encrypted=encrypt_secret(SMTP_PASSWORD),
            save_sent_copy=save_sent_copy,
            is_sync_enabled=False,  # no periodic syncs; the outbox queues its own
        )
    return tenant, user, account, str(RefreshToken.for_user(user).access_token)


def status_counts(tenant) -> dict[str, int]:
    from django.db.models import Count

    from compose.models import Draft
    from emailclient.core.tenancy import tenant_scope

    with tenant_scope(tenant.id):
        return dict(Draft.objects.values("status").annotate(n=Count("id")).values_list("status", "n"))


def sent_copies(tenant) -> dict[str, int]:
    from django.db.models import Count

    from compose.models import SendQueueItem
    from emailclient.core.tenancy import tenant_scope

    with tenant_scope(tenant.id):
        return dict(
            SendQueueItem.objects.values("sent_copy").annotate(n=Count("id")).values_list("sent_copy", "n")
        )


# --- The messages ------------------------------------------------------------------------


def body_text(i: int, size: int) -> str:
    line = "The quick brown fox jumps over the lazy dog; the outbox sends it once. "
    text = f"Message {i} of the send benchmark.\n\n" + (line * (size // len(line) + 1))[:size]
    return "\n".join(text[j : j + 72] for j in range(0, len(text), 72)) + "\n"


def request_body(account, i: int, size: int) -> dict:
    return {
        "account": str(account.id),
        "to": [RECIPIENT],
        "subject": f"Bench message {i}",
        "text_body": body_text(i, size),
    }


def direct_messages(account, count: int, size: int) -> list[bytes]:
    """The API's messages, built as the outbox builds them."""
    from compose.addresses import mailbox_parse
    from compose.mime import OutgoingMessage, message_build, message_id_make

    sender = {"name": account.account_name, "address": account.email_address}
    to = [mailbox_parse(RECIPIENT)]
    return [
        message_build(
            OutgoingMessage(
                sender=sender,
                to=to,
                cc=[],
                bcc=[],
                reply_to=[],
                subject=f"Bench message {i}",
                text_body=body_text(i, size),
                html_body="",
                message_id=message_id_make("example.com"),
                date=datetime.now(UTC),
            )
        )
        for i in range(count)
    ]


def run_direct(port: int, ca_file: Path, messages: list[bytes]) -> float:
    """smtplib over one connection: STARTTLS (verified) and AUTH once."""
    context = ssl.create_default_context(cafile=str(ca_file))
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="[127.0.0.1]", timeout=60) as client:
        client.starttls(context=context)
        client.login(SMTP_USER, SMTP_PASSWORD)
        for data in messages:
            refused = client.sendmail("bench@example.com", ["reader@example.net"], data)
            if refused:
                raise RuntimeError(f"direct send refused: {refused}")
    return time.perf_counter() - t0


# --- The outbox ----------------------------------------------------------------------------


def api_sends(
    port: int, token: str, bodies: list[dict], clients: int
) -> tuple[list[float], list[int], float]:
    """POST each body to /api/compose/send from `clients` threads with
    keep-alive connections; latencies (s), status codes, and the start time."""
    latencies: list[float] = []
    codes: list[int] = []
    lock = threading.Lock()
    queue = list(reversed(bodies))
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Tenant-ID": "bench",
        "Content-Type": "application/json",
    }

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            payload = json.dumps(body)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/compose/send", body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
                code = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                code = 0
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                codes.append(code)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, codes, start


def drain_window(tenant):
    """From the first claim of an item by a worker to the last `sent`, and
    how many items were sent: the outbox's own time, without the workers'
    start-up or the API's."""
    from django.db.models import Count, Max, Min

    from compose.models import SendQueueItem
    from emailclient.core.tenancy import tenant_scope

    with tenant_scope(tenant.id):
        row = SendQueueItem.objects.filter(sent_at__isnull=False).aggregate(
            first=Min("last_attempt_at"), last=Max("sent_at"), n=Count("id")
        )
    return row["first"], row["last"], row["n"]


def latency_figures(latencies: list[float], codes: list[int], seconds: float | None) -> dict:
    if not latencies:
        return {"requests": 0}
    return {
        "requests": len(latencies),
        "per_second": len(latencies) / seconds if seconds else None,
        "codes": {str(c): codes.count(c) for c in sorted(set(codes))},
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def start_process(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    out = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def stop_process(process: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_workers_ready(log_path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in log_path.read_bytes():
        if process.poll() is not None:
            raise RuntimeError(f"celery worker exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("celery worker not ready")
        time.sleep(0.2)


# --- Main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2000, help="text body bytes per message")
    parser.add_argument("--workers", type=int, default=4, help="Celery worker processes (prefork)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--clients", type=int, default=2, help="API client threads while queuing")
    parser.add_argument(
        "--probe-requests", type=int, default=200, help="API sends by the probe while the outbox drains"
    )
    parser.add_argument(
        "--probe-interval", type=float, default=0.25, help="seconds between the probe's sends"
    )
    parser.add_argument(
        "--direct-runs", type=int, default=3, help="smtplib runs; the median is the direct rate"
    )
    parser.add_argument("--no-sent-copy", action="store_true", help="accounts whose server files Sent itself")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the database and the work directory")
    parser.add_argument("--sink", nargs=4, metavar=("PORT", "CERT", "KEY", "RECORD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink_main(int(args.sink[0]), args.sink[1], args.sink[2], args.sink[3])
        return 0

    from devmail import DevMail, free_port

    work = Path(tempfile.mkdtemp(prefix="send-bench-"))
    devmail = DevMail(work / "mail", imap_port=free_port(), pop3_port=None, imaps_port=None, pop3s_port=None)
    environment = bench_environment(devmail.ca_file)
    env = {**os.environ, **environment}
    processes: list[subprocess.Popen] = []
    settings = None
    try:
        log(f"devmail in {work}")
        devmail.start()
        devmail.add_user(MAIL_USER, MAIL_PASSWORD)
        settings = django_setup(environment)
        log(f"database {BENCH_DB}: create and migrate")
        benchdb.database_create(settings)
        import redis

        redis.Redis.from_url(BENCH_REDIS).flushdb()

        smtp_port, web_port = free_port(), free_port()
        record = work / "sink-ids.txt"
        sink = start_process(
            [
                sys.executable,
                __file__,
                "--sink",
                str(smtp_port),
                str(devmail.cert_file),
                str(devmail.key_file),
                str(record),
            ],
            env,
            work / "sink.log",
        )
        processes.append(sink)
        wait_port(smtp_port, sink, "the sink")
        tenant, _user, account, token = create_account(devmail, smtp_port, not args.no_sent_copy)

        # Direct: smtplib, one connection.
        messages = direct_messages(account, args.messages, args.size)
        log(f"direct: {len(messages)} messages of ~{len(messages[0])} bytes over one connection")
        # A run of a second or two swings 3x on a shared machine: the median of a few.
        direct_runs = [run_direct(smtp_port, devmail.ca_file, messages) for _ in range(args.direct_runs)]
        direct_seconds = statistics.median(direct_runs)
        direct_delivered = len(sink_ids(record))
        record.write_bytes(b"")
        direct_rate = args.messages / direct_seconds
        log(f"direct: {direct_rate:.0f} msg/s (median of {[round(args.messages / t) for t in direct_runs]})")

        # The outbox, in two phases: the API queues N sends with no worker
        # running (the API alone), then the workers drain them while a probe
        # client keeps sending (the API while the outbox drains).
        venv = Path(sys.executable).parent
        web = start_process(
            [
                str(venv / "gunicorn"),
                "emailclient.wsgi",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                str(args.web_workers),
                "--log-level",
                "warning",
            ],
            env,
            work / "web.log",
        )
        processes.append(web)
        wait_port(web_port, web, "gunicorn")
        for i in range(2 * args.web_workers):  # each web worker's imports and connections
            _, warm_codes, _ = api_sends(
                web_port, token, [request_body(account, -1 - i, args.size)], clients=1
            )
            if warm_codes != [202]:
                web_log = (work / "web.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"POST /api/compose/send answered {warm_codes}: {web_log}")

        log(f"queue: {args.messages} sends through the API ({args.clients} clients), no worker running")
        bodies = [request_body(account, i, args.size) for i in range(args.messages)]
        t0 = time.perf_counter()
        queue_latencies, queue_codes, _ = api_sends(web_port, token, bodies, args.clients)
        queue_seconds = time.perf_counter() - t0
        log(f"queue: {queue_seconds:.1f} s; starting {args.workers} workers")

        worker_log = work / "worker.log"
        worker = start_process(
            [
                str(venv / "celery"),
                "-A",
                "emailclient",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(args.workers),
                "--without-gossip",
                "--without-mingle",
            ],
            env,
            worker_log,
        )
        processes.append(worker)
        probe_stop = threading.Event()
        probe: dict[str, list] = {"latencies": [], "codes": []}

        def probe_client() -> None:
            i = 0
            while not probe_stop.is_set() and i < args.probe_requests:
                latencies, codes, _ = api_sends(
                    web_port, token, [request_body(account, 100_000 + i, args.size)], clients=1
                )
                probe["latencies"] += latencies
                probe["codes"] += codes
                i += 1
                probe_stop.wait(args.probe_interval)

        wait_workers_ready(worker_log, worker)
        probe_thread = threading.Thread(target=probe_client)
        probe_thread.start()
        queued = args.messages + 2 * args.web_workers
        deadline = time.monotonic() + max(600, args.messages)
        try:
            while status_counts(tenant).get("sent", 0) < queued and time.monotonic() < deadline:
                counts = status_counts(tenant)
                if not counts.get("queued") and not counts.get("sending"):
                    break  # nothing left to do: some ended in another status
                time.sleep(0.05)
        finally:
            probe_stop.set()
            probe_thread.join()
        # The probe's own last sends, then the Sent copies, which follow `sent`.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = status_counts(tenant)
            if not counts.get("queued") and not counts.get("sending"):
                break
            time.sleep(0.1)
        total = sum(status_counts(tenant).values())
        while sum(sent_copies(tenant).get(k, 0) for k in ("appended", "skipped", "failed")) < total:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        first_claim, last_sent, sent_items = drain_window(tenant)
        outbox_seconds = (last_sent - first_claim).total_seconds()
        outbox_rate = sent_items / outbox_seconds

        ids = sink_ids(record)
        counts = status_counts(tenant)
        copies = sent_copies(tenant)
        status = devmail.doveadm("-f", "flow", "mailbox", "status", "-u", MAIL_USER, "messages", "Sent")
        sent_folder = int(status.strip().split("=", 1)[1])
        figures = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "system": platform.platform(),
            },
            "messages": args.messages,
            "message_bytes": len(messages[0]),
            "workers": args.workers,
            "web_workers": args.web_workers,
            "clients": args.clients,
            "sent_copy": not args.no_sent_copy,
            "direct": {
                "seconds": direct_seconds,
                "per_second": direct_rate,
                "runs_per_second": [args.messages / t for t in direct_runs],
                "delivered": direct_delivered,
            },
            "outbox": {
                "seconds": outbox_seconds,
                "per_second": outbox_rate,
                "sent_in_window": sent_items,
                "delivered": len(ids),
                "distinct_message_ids": len(set(ids)),
                "statuses": counts,
                "sent_copies": copies,
                "sent_folder_messages": sent_folder,
            },
            "api_idle": latency_figures(queue_latencies, queue_codes, queue_seconds),
            "api_draining": latency_figures(probe["latencies"], probe["codes"], None),
            "ratio": outbox_rate / direct_rate,
        }
        total = sum(counts.values())
        exactly_once = (
            len(ids) == total
            and len(set(ids)) == total
            and counts.get("sent", 0) == total
            and (args.no_sent_copy or sent_folder == total)
        )
        figures["exactly_once"] = exactly_once
        report(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return 0 if exactly_once else 1
    finally:
        for process in reversed(processes):
            stop_process(process)
        devmail.stop()
        if settings is not None and not args.keep:
            benchdb.database_drop(settings)
        if args.keep:
            log(f"kept {work} and the database {BENCH_DB}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(f: dict) -> None:
    o, d = f["outbox"], f["direct"]
    idle, busy = f["api_idle"], f["api_draining"]

    def ok(good: bool) -> str:
        return "ok" if good else "MISSED"

    def api(a: dict) -> str:
        if not a.get("requests"):
            return "no requests"
        rate = f", {a['per_second']:.0f} req/s" if a.get("per_second") else ""
        return (
            f"p50 {a['p50_ms']:.1f} ms, p95 {a['p95_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms, "
            f"max {a['max_ms']:.1f} ms ({a['requests']} requests{rate}; codes {a['codes']})"
        )

    print()
    print(
        f"Send benchmark, {f['messages']} messages of {f['message_bytes']} bytes, {f['machine']['cpus']} CPUs"
    )
    runs = ", ".join(f"{r:.0f}" for r in d.get("runs_per_second", []))
    print(
        f"  direct smtplib, one connection   {d['per_second']:8.1f} msg/s  ({d['seconds']:.2f} s; "
        f"median of {runs})"
    )
    print(
        f"  outbox (Celery -> SMTP)          {o['per_second']:8.1f} msg/s  ({o['sent_in_window']} in "
        f"{o['seconds']:.2f} s; {f['workers']} workers, Sent copy {'on' if f['sent_copy'] else 'off'})"
    )
    print(
        f"  ratio outbox / direct            {f['ratio']:8.3f}        "
        f"target >= {TARGET_RATIO:.3f}: {ok(f['ratio'] >= TARGET_RATIO)}"
    )
    print(f"  API send, outbox idle            {api(idle)}")
    print(f"  API send, outbox draining        {api(busy)}")
    p95 = busy.get("p95_ms", float("inf"))
    print(f"{'':35}target p95 < {TARGET_API_P95_MS:.0f} ms while draining: {ok(p95 < TARGET_API_P95_MS)}")
    print(
        f"  exactly once                     {o['delivered']} delivered, "
        f"{o['distinct_message_ids']} distinct Message-IDs, statuses {o['statuses']}, "
        f"Sent copies {o['sent_copies']} (Sent folder {o['sent_folder_messages']}): {ok(f['exactly_once'])}"
    )


if __name__ == "__main__":
    sys.exit(main())
