#!/usr/bin/env python3
"""Read-path benchmark: folder pages, message detail, threads and search through
the HTTP API under gunicorn, at 1,000,000 messages per tenant, against notmuch.

    .venv/bin/python bench/read_bench.py --messages-per-tenant 20000          # the pipeline, minutes
    .venv/bin/python bench/read_bench.py --json bench/results-read.json \
        --plans bench/results-read-plans.txt                                  # 2 x 1,000,000: hours to load
    .venv/bin/python bench/read_bench.py --skip-load ...                      # measure a loaded database

One run:

1. loads (or resumes, or with --skip-load reuses) `emailclient_readbench`:
   two tenants of N messages, 100 accounts x 10 folders each (read_load.py,
   read_mailgen.py), and the Maildir of the first tenant's mail;
2. indexes one account's Maildir with `notmuch new` (--notmuch-account;
   notmuch indexes about 60 messages/s here, so the whole tenant would take
   hours);
3. starts gunicorn (deploy/gunicorn.conf.py, production settings, DEBUG off,
   2 workers x 4 threads) on the runtime role, gets JWTs from
   /api/auth/token/ for the member owning the largest account and for the
   tenant admin;
4. measures, one request at a time over a keep-alive connection, after a
   warm-up: the first page of the member's INBOX, its page 1,000 (the cursor
   URL saved while walking there), message details, threads, the first page
   of the member's thread list (its account of 192,776 messages); then 20 searches
   (10 selective, 10 broad) as the admin over the whole tenant, and the same
   20 scoped to the notmuch account (`&account=`);
5. times the same 20 searches with notmuch (bindings, read_notmuch.py) on that
   account's messages and prints ours/notmuch; steps 4 and 5 run --rounds
   times, alternately, and each figure is the median of the rounds' (the
   machine's speed drifts between rounds: 40 % from one minute to the next
   on a shared 2-core VM, notmuch's too);
6. runs each query class once in-process with the same settings, captures its
   SQL and prints EXPLAIN (ANALYZE, BUFFERS) of it under the tenant's RLS
   setting, checking that the plan filters on the tenant.
"""

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import read_load  # noqa: E402
import read_mailgen as mailgen  # noqa: E402

PAGE_SIZE = 50  # REST_FRAMEWORK["PAGE_SIZE"]
DEEP_PAGE = 1_000
TENANT = read_load.TENANT_SLUGS[0]
TARGETS_MS = {  # p95 targets (bench/README.md)
    "folder_first_page": 20,
    "folder_page_1000": 20,
    "thread": 20,
    "search_selective": 50,
    "search_broad": 300,
}
log = read_load.log


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values),
    }


# --- The workload -------------------------------------------------------------------------


def pick_workload(settings, *, accounts: int, notmuch_account: int, samples: int, seed: int) -> dict:
    """Ids and queries, read from the loaded data (as the admin role)."""
    import psycopg

    tenant = read_load.tenant_id(0)
    member_account = read_load.account_id(0, 0)
    inbox = read_load.folder_id(0, 0, "INBOX")
    nm_account = read_load.account_id(0, notmuch_account)
    with psycopg.connect(read_load.conninfo(settings, "admin")) as conn:
        conn.execute("SELECT setseed(%s)", [seed / 1000])
        q = conn.execute
        inbox_size = q("SELECT count(*) FROM email_messages WHERE folder_id = %s", [inbox]).fetchone()[0]
        nm_size = q("SELECT count(*) FROM email_messages WHERE account_id = %s", [nm_account]).fetchone()[0]
        details = [
            r[0]
            for r in q(
                "SELECT id FROM email_messages WHERE account_id = %s ORDER BY random() LIMIT %s",
                [member_account, samples],
            )
        ]
        threads = [
            r[0]
            for r in q(
                "SELECT thread_id FROM (SELECT DISTINCT thread_id FROM email_messages "
                "WHERE account_id = %s AND thread_id IS NOT NULL) t ORDER BY random() LIMIT %s",
                [member_account, samples],
            )
        ]
        # Needles from the notmuch account, so both sides search the same mail.
        codes = q(
            r"SELECT substring(text_body from '(?:Ticket|Invoice|Order|Case) ([0-9]{7})') AS code "
            "FROM email_messages WHERE account_id = %s "
            "AND text_body ~ '(Ticket|Invoice|Order|Case) [0-9]{7}' "
            "ORDER BY random() LIMIT 3",
            [nm_account],
        ).fetchall()
        phrases = q(
            r"SELECT substring(text_body from '(?:Invoice|Order) [0-9]{7}') FROM email_messages "
            "WHERE account_id = %s AND text_body ~ '(Invoice|Order) [0-9]{7}' ORDER BY random() LIMIT 1",
            [nm_account],
        ).fetchone()[0]
        # A correspondent of the account who wrote to it a few times.
        rare_sender = q(
            "SELECT from_address FROM email_messages WHERE account_id = %s GROUP BY from_address "
            "HAVING count(*) BETWEEN 2 AND 6 ORDER BY random() LIMIT 1",
            [nm_account],
        ).fetchone()[0]
        rare_recipient = q(
            "SELECT r->>'address' FROM email_messages, jsonb_array_elements(\"to\") r "
            "WHERE account_id = %s GROUP BY 1 HAVING count(*) BETWEEN 3 AND 30 ORDER BY random() LIMIT 1",
            [nm_account],
        ).fetchone()[0]
        thread_subject = q(
            "SELECT subject FROM email_messages WHERE account_id = %s AND thread_id IS NOT NULL "
            "AND subject NOT LIKE 'R%%' AND subject NOT LIKE 'F%%' AND length(subject) > 25 "
            "ORDER BY random() LIMIT 1",
            [nm_account],
        ).fetchone()[0]
    vocab = mailgen.Vocabulary()
    words = vocab.words
    # Pseudo-words by rank: 5,000 is in ~2 % of messages, 30,000 in ~0.3 %, 50,000 in ~0.2 %.
    rare = [words[r] for r in (29_000, 33_000, 41_000, 47_000, 50_100)]
    mid = [words[r] for r in (4_000, 6_000)]
    subject_words = " ".join(thread_subject.split()[:3])
    code_a, code_b, code_c = (c[0] for c in codes)
    selective = [
        (code_a, code_a),
        (f'"{phrases}"', f'"{phrases}"'),
        (f"{code_b} OR", None),  # placeholder replaced below (keeps the list readable)
        (f"from:{rare_sender}", f"from:{rare_sender}"),
        (f'subject:"{subject_words}"', f'subject:"{subject_words}"'),
        (f"{rare[0]} {rare[1]}", f"{rare[0]} and {rare[1]}"),
        (f"{rare[2]} {mid[0]}", f"{rare[2]} and {mid[0]}"),
        (f"to:{rare_recipient} meeting", f"to:{rare_recipient} and meeting"),
        (f"{rare[3]} after:2024-01-01", f"{rare[3]} and date:2024-01-01.."),
        (f"{rare[4]} is:unread", f"{rare[4]} and tag:unread"),
    ]
    selective[2] = (f"{code_c} has:attachment", f"{code_c} and tag:attachment")
    broad = [
        ("meeting", "meeting"),
        ("report review", "report and review"),
        ('"please review"', '"please review"'),
        ("is:unread", "tag:unread"),
        ("has:attachment report", "tag:attachment and report"),
        ("invoice after:2024-01-01", "invoice and date:2024-01-01.."),
        ("project -meeting", "project and not meeting"),
        ("from:smith", "from:smith"),
        ("is:unread update", "tag:unread and update"),
        ("is:flagged", "tag:flagged"),
    ]
    queries = [
        {"name": f"S{i + 1}", "class": "selective", "ours": o, "notmuch": n}
        for i, (o, n) in enumerate(selective)
    ] + [{"name": f"B{i + 1}", "class": "broad", "ours": o, "notmuch": n} for i, (o, n) in enumerate(broad)]
    return {
        "tenant_id": str(tenant),
        "member": read_load.member_username(0, 0),
        "admin": read_load.admin_username(0),
        "member_account": str(member_account),
        "notmuch_account": str(nm_account),
        "notmuch_account_index": notmuch_account,
        "notmuch_account_messages": nm_size,
        "inbox": str(inbox),
        "inbox_size": inbox_size,
        "details": [str(d) for d in details],
        "threads": [str(t) for t in threads],
        "queries": queries,
    }


# --- gunicorn and HTTP ------------------------------------------------------------------------


def fix_passwords() -> None:
    """Databases loaded before read_load.py hashed with PBKDF2 hold MD5 hashes,
    which the production settings refuse: rehash (auth_user has no RLS)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
    from django.db import connections

    prefixes = [f"{slug}-" for slug in read_load.TENANT_SLUGS]
    users = get_user_model().objects.filter(username__regex=r"^(" + "|".join(prefixes) + ")")
    stale = users.filter(password__startswith="md5$")  # noqa: S106 - a hash prefix
    if stale.exists():
        stale.update(password=make_password(read_load.USER_PASSWORD, hasher=PBKDF2PasswordHasher()))
    connections.close_all()


def run_setup_sql(settings, path: Path) -> dict:
    """An experiment's DDL (a candidate index, statistics), as the owner, then ANALYZE."""
    import psycopg

    text = path.read_text()
    t0 = time.perf_counter()
    with psycopg.connect(read_load.conninfo(settings, "owner"), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        for statement in [s.strip() for s in text.split(";") if s.strip()]:
            log(f"setup SQL: {statement[:100]}")
            conn.execute(statement)
        conn.execute("ANALYZE email_messages")
    return {"file": str(path), "sql": text, "seconds": time.perf_counter() - t0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings, port: int) -> dict:
    db = settings.DATABASES["default"]
    admin = settings.DATABASES["admin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "DJANGO_", "TEST_DATABASE"))}
    env.update(
        DJANGO_SETTINGS_MODULE="emailclient.settings.production",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        DATABASE_ADMIN_URL=f"postgres://{admin['USER']}@{admin['HOST']}:{admin['PORT']}/{admin['NAME']}",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(48),
        JWT_SIGNING_KEY=secrets.token_urlsafe(48),
        CREDENTIAL_ENCRYPTION_KEYS=",".join(settings.CREDENTIAL_ENCRYPTION_KEYS),
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",  # plain HTTP on loopback: no TLS proxy in front
        REDIS_URL="redis://127.0.0.1:6379/15",
        CACHE_KEY_PREFIX="emailclient-readbench",
        AUTH_RATE_LIMIT="1000/m",
        # The throttles count every request (their cost is in the figures)
        # but never refuse one: this measures the read paths, not the limits.
        API_RATE_LIMIT_USER="1000000/m",
        API_RATE_LIMIT_TENANT="1000000/m",
        API_RATE_LIMIT_SEARCH="1000000/m",
        JWT_ACCESS_TOKEN_MINUTES="600",  # noqa: S106 - a lifetime
        LOG_LEVEL="WARNING",
        BLOB_STORAGE_DIR=str(BASE_DIR / "var" / "read-bench" / "blobs"),
        WEB_CONCURRENCY="2",
        # No worker recycling mid-run: a fresh worker's first requests (imports,
        # a new database connection) would land in the percentiles.
        GUNICORN_MAX_REQUESTS="0",
        # A slow search must finish and be timed, not be cut at 30 s and retried.
        GUNICORN_TIMEOUT="300",
        PORT=str(port),
    )
    return env


def start_gunicorn(settings, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [
        str(BASE_DIR / ".venv" / "bin" / "gunicorn"),
        "-c",
        str(BASE_DIR / "deploy" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--access-logfile",
        str(work / "access.log"),
        "--error-logfile",
        str(work / "gunicorn.log"),
        "emailclient.wsgi",
    ]
    proc = subprocess.Popen(
        cmd, cwd=BASE_DIR, env=server_env(settings, port), stdin=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(
        f"gunicorn did not start: {(work / 'gunicorn.log').read_text(errors='replace')[-2000:]}"
    )


def stop_gunicorn(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Client:
    """One keep-alive connection; every request timed from send to last byte."""

    def __init__(self, port: int, token: str | None = None):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"X-Tenant-ID": TENANT}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str) -> tuple[float, dict]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        ms = (time.perf_counter() - t0) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:500]!r}")
        return ms, json.loads(body)

    def token(self, username: str, password: str) -> str:
        self.conn.request(
            "POST",
            "/api/auth/token/",
            body=json.dumps({"username": username, "password": password}),
            headers={"Content-Type": "application/json"},
        )
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"token for {username}: {response.status} {body[:300]!r}")
        return json.loads(body)["access"]


def relative(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def timed(client: Client, paths: list[str], warmup: int) -> list[float]:
    for path in paths[:warmup]:
        client.get(path)
    return [client.get(path)[0] for path in paths]


def search_path(query: str, account: str | None = None) -> str:
    params = {"query": query}
    if account:
        params["account"] = account
    return "/api/sync/search?" + urllib.parse.urlencode(params)


def measure_http(port: int, workload: dict, *, requests: int, repeats: int, deep_path: str | None) -> dict:
    anonymous = Client(port)
    member = Client(port, anonymous.token(workload["member"], read_load.USER_PASSWORD))
    admin = Client(port, anonymous.token(workload["admin"], read_load.USER_PASSWORD))
    results: dict = {}

    first = f"/api/messages/?folder={workload['inbox']}"
    if deep_path is None:
        log("walking the INBOX's cursor to page 1,000")
        t0 = time.perf_counter()
        path, page = first, 1
        _, body = member.get(path)
        while page < DEEP_PAGE and body.get("next"):
            path = relative(body["next"])
            _, body = member.get(path)
            page += 1
        deep_path, deep_page = path, page
        results["walk_seconds"] = time.perf_counter() - t0
    else:  # the cursor URL saved by an earlier run on the same data
        deep_page = DEEP_PAGE
        _, body = member.get(deep_path)
    results["deep_page"] = deep_page
    results["deep_path"] = deep_path
    results["deep_page_rows"] = len(body["results"])

    log(f"folder pages: first and {deep_page}, {requests} each")
    results["folder_first_page"] = summary(timed(member, [first] * requests, warmup=10))
    results["folder_page_1000"] = summary(timed(member, [deep_path] * requests, warmup=10))
    log(f"message details: {len(workload['details'])}")
    results["message_detail"] = summary(
        timed(member, [f"/api/messages/{i}/" for i in workload["details"]], warmup=5)
    )
    log(f"threads: {len(workload['threads'])}")
    results["thread"] = summary(timed(member, [f"/api/threads/{t}/" for t in workload["threads"]], warmup=5))
    threads = f"/api/threads/?account={workload['member_account']}"
    log(f"thread list, first page: {requests}")
    results["thread_list"] = summary(timed(member, [threads] * requests, warmup=5))

    per_query = []
    for scope, client, account in (("tenant", admin, None), ("account", admin, workload["notmuch_account"])):
        log(f"searches, {scope} scope: 20 queries x {repeats}")
        for query in workload["queries"]:
            path = search_path(query["ours"], account)
            _, body = client.get(path)  # warm-up
            times = [client.get(path)[0] for _ in range(repeats)]
            per_query.append(
                {
                    **query,
                    "scope": scope,
                    "ms": times,
                    "returned": len(body["results"]),
                    "p50": percentile(times, 50),
                }
            )
    results["queries"] = per_query
    for scope in ("tenant", "account"):
        for cls in ("selective", "broad"):
            times = [t for q in per_query if q["scope"] == scope and q["class"] == cls for t in q["ms"]]
            results[f"search_{cls}" if scope == "tenant" else f"search_{cls}_account"] = summary(times)
    return results


def merge_http_rounds(rounds: list[dict]) -> dict:
    """One result from several rounds of `measure_http`: each class's
    percentiles are the median of the rounds' (the machine drifts between
    rounds more than the code does), `rounds_p95` keeps each round's; each
    search keeps all its timings."""
    merged = dict(rounds[0])
    for key, value in rounds[0].items():
        if isinstance(value, dict) and "p95" in value:
            per_round = [r[key] for r in rounds]
            merged[key] = {
                "n": sum(r["n"] for r in per_round),
                **{stat: statistics.median(r[stat] for r in per_round) for stat in ("p50", "p95", "p99")},
                "max": max(r["max"] for r in per_round),
                "rounds_p95": [r["p95"] for r in per_round],
            }
    merged["queries"] = []
    for i, query in enumerate(rounds[0]["queries"]):
        times = [t for r in rounds for t in r["queries"][i]["ms"]]
        merged["queries"].append({**query, "ms": times, "p50": percentile(times, 50)})
    return merged


def merge_notmuch_rounds(rounds: list[dict]) -> dict:
    merged = {**rounds[0], "queries": []}
    for i, query in enumerate(rounds[0]["queries"]):
        merged["queries"].append({**query, "ms": [t for r in rounds for t in r["queries"][i]["ms"]]})
    return merged


# --- notmuch ------------------------------------------------------------------------------


def notmuch_index(maildir: Path, account: int, work: Path) -> dict:
    """`notmuch new` over one account's Maildir (skipped when already done)."""
    path = read_load.maildir_folder(maildir, account, "x").parent
    config = work / "notmuch.config"
    config.write_text(
        f"[database]\npath={path}\n[user]\nname=Bench\nprimary_email=bench@example.com\n"
        "[new]\ntags=unread;inbox;\nignore=\n[search]\nexclude_tags=\n[maildir]\nsynchronize_flags=true\n"
    )
    files = sum(1 for _ in path.glob("*/cur/*"))
    marker = path / ".notmuch" / "bench-indexed"
    seconds = None
    if not marker.exists():
        log(f"notmuch new over {path} ({files:,} files)")
        t0 = time.perf_counter()
        subprocess.run(["nice", "-n", "10", "notmuch", f"--config={config}", "new", "--quiet"], check=True)
        seconds = time.perf_counter() - t0
        marker.write_text(json.dumps({"files": files, "seconds": seconds}))
    else:
        seconds = json.loads(marker.read_text())["seconds"]
    version = subprocess.run(["notmuch", "--version"], capture_output=True, text=True).stdout.strip()
    return {"path": str(path), "files": files, "index_seconds": seconds, "version": version}


def notmuch_time(db_path: str, queries: list[dict], work: Path, repeats: int) -> dict:
    qfile = work / "notmuch-queries.json"
    qfile.write_text(json.dumps([{"name": q["name"], "notmuch": q["notmuch"]} for q in queries]))
    out = subprocess.run(
        [
            "/usr/bin/python3",
            str(Path(__file__).parent / "read_notmuch.py"),
            "--db",
            db_path,
            "--queries",
            str(qfile),
            "--repeats",
            str(repeats),
            "--limit",
            str(PAGE_SIZE),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


# --- EXPLAIN ------------------------------------------------------------------------------------

TENANT_RLS = "current_setting('app.current_tenant_id'"


def explain_all(workload: dict, deep_path: str) -> tuple[str, dict]:
    """Each query class once, in-process (same views, settings of this run on
    the runtime role), its SQL captured and EXPLAINed under the tenant."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client as DjangoClient
    from django.test.utils import CaptureQueriesContext
    from rest_framework_simplejwt.tokens import RefreshToken

    from emailclient.core.tenancy import tenant_scope

    User = get_user_model()
    tokens = {
        role: str(RefreshToken.for_user(User.objects.get(username=workload[role])).access_token)
        for role in ("member", "admin")
    }
    requests = [
        ("folder_first_page", "member", f"/api/messages/?folder={workload['inbox']}"),
        ("folder_page_1000", "member", deep_path),
        ("message_detail", "member", f"/api/messages/{workload['details'][0]}/"),
        ("thread", "member", f"/api/threads/{workload['threads'][0]}/"),
        ("thread_list", "member", f"/api/threads/?account={workload['member_account']}"),
    ]
    for q in workload["queries"]:
        requests.append((f"search {q['name']} ({q['class']}): {q['ours']}", "admin", search_path(q["ours"])))
    for q in workload["queries"]:
        requests.append(
            (
                f"search {q['name']} ({q['class']}), account scope: {q['ours']}",
                "admin",
                search_path(q["ours"], workload["notmuch_account"]),
            )
        )
    lines, checks = [], {}
    for name, role, path in requests:
        client = DjangoClient(HTTP_HOST="127.0.0.1")
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {tokens[role]}", HTTP_X_TENANT_ID=TENANT)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.content[:300]!r}")
        # Replayed in order in one transaction: the planner switches a view
        # sets for its page (IdsPagination) apply to the plans as they did.
        statements = [q["sql"] for q in captured.captured_queries]
        sqls = [
            sql for sql in statements if '"email_messages"' in sql and not sql.startswith("EXPLAIN")
        ]  # not narrow_to_candidate_ids's own guesses
        lines.append("=" * 100)
        lines.append(
            f"{name}\nGET {path} as the {role}; {len(captured.captured_queries)} queries in the request"
        )
        ok = True
        with tenant_scope(workload["tenant_id"]), connection.cursor() as cursor:
            for sql in statements:
                if "set_config('enable_" in sql.replace('"', "'"):
                    cursor.execute(sql)
                    lines.append("-" * 100)
                    lines.append(f"planner switch, as in the request: {sql}")
                    continue
                if sql not in sqls:
                    continue
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                explicit = workload["tenant_id"] in plan
                rls = TENANT_RLS in plan
                ok = ok and explicit and rls
                lines.append("-" * 100)
                lines.append(f"SQL: {sql}\n")
                lines.append(plan)
                lines.append(
                    f"\ntenant filter in the plan: explicit tenant_id = ... {'yes' if explicit else 'NO'};"
                    f" RLS policy {'yes' if rls else 'NO'}"
                )
        checks[name] = {"tenant_filter_in_plan": ok, "statements": len(sqls)}
    return "\n".join(lines) + "\n", checks


# --- Report ----------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "ok" if value < target else "MISSED"


def print_report(r: dict) -> None:
    h = r["http"]
    print()
    print(
        f"Read benchmark: {r['config']['messages_per_tenant']:,} messages per tenant x 2 tenants, "
        f"{r['config']['accounts']} accounts x 10 folders each; "
        "gunicorn 2 workers x 4 threads, production settings; "
        f"PostgreSQL {r['postgres']['version']} (shared_buffers {r['postgres']['shared_buffers']}); "
        f"{r['machine']['cpus']} CPUs"
    )
    print(
        f"Member's INBOX: {r['workload']['inbox_size']:,} messages; deep page measured: "
        f"{h['deep_page']} ({h['deep_page_rows']} rows); each figure the median of "
        f"{r['rounds']} rounds' (p95 of each round in brackets)"
    )
    rows = [("class", "n", "p50 ms", "p95 ms", "p99 ms", "target (p95)", "", "rounds' p95")]
    names = [
        ("folder_first_page", "folder, first page (member)"),
        ("folder_page_1000", f"folder, page {h['deep_page']} (member)"),
        ("message_detail", "message detail (member)"),
        ("thread", "thread (member)"),
        ("thread_list", "thread list, first page (member)"),
        ("search_selective", "search, selective (admin, whole tenant)"),
        ("search_broad", "search, broad (admin, whole tenant)"),
        ("search_selective_account", "search, selective (one account)"),
        ("search_broad_account", "search, broad (one account)"),
    ]
    for key, label in names:
        s = h[key]
        target = TARGETS_MS.get(key)
        rows.append(
            (
                label,
                str(s["n"]),
                f"{s['p50']:.1f}",
                f"{s['p95']:.1f}",
                f"{s['p99']:.1f}",
                f"< {target} ms" if target else "",
                verdict(s["p95"], target) if target else "",
                "[" + ", ".join(f"{p:.1f}" for p in s.get("rounds_p95", [])) + "]",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(widths[j]) for j, c in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    nm = r.get("notmuch")
    if nm:
        print(
            f"\nnotmuch {nm['index']['version']} over account {r['workload']['notmuch_account_index']}'s "
            f"{nm['index']['files']:,} messages (bindings, newest first, first {PAGE_SIZE}); "
            "ours scoped to the "
            "same account (&account=):"
        )
        print(f"  {'query':<5} {'ours p50':>9} {'notmuch p50':>12} {'ratio':>7}  {'matches nm':>10}  query")
        for q in r["ratios"]["per_query"]:
            print(
                f"  {q['name']:<5} {q['ours_p50']:9.1f} {q['notmuch_p50']:12.2f} {q['ratio']:7.1f}  "
                f"{q['notmuch_matches']:>10}  {q['ours']}"
            )
        for cls, v in r["ratios"]["per_class"].items():
            print(
                f"  {cls}: ours p50 {v['ours_p50']:.1f} ms, notmuch p50 {v['notmuch_p50']:.2f} ms, "
                f"ours/notmuch {v['ratio']:.1f}x (median of the per-query ratios)"
            )
    print(
        "\nTenant filter in every plan:",
        "yes"
        if all(c["tenant_filter_in_plan"] for c in r["explain"].values())
        else "NO: " + ", ".join(k for k, c in r["explain"].items() if not c["tenant_filter_in_plan"]),
    )


def ratios(http: dict, notmuch: dict) -> dict:
    nm = {q["name"]: q for q in notmuch["queries"]}
    per_query = []
    for q in http["queries"]:
        if q["scope"] != "account":
            continue
        theirs = nm[q["name"]]
        nm_p50 = percentile(theirs["ms"], 50)
        per_query.append(
            {
                "name": q["name"],
                "class": q["class"],
                "ours": q["ours"],
                "notmuch": q["notmuch"],
                "ours_p50": q["p50"],
                "notmuch_p50": nm_p50,
                "ratio": q["p50"] / nm_p50,
                "ours_returned": q["returned"],
                "notmuch_returned": theirs["returned"],
                "notmuch_matches": theirs["matches"],
            }
        )
    per_class = {}
    for cls in ("selective", "broad"):
        qs = [q for q in per_query if q["class"] == cls]
        per_class[cls] = {
            "ours_p50": percentile([q["ours_p50"] for q in qs], 50),
            "notmuch_p50": percentile([q["notmuch_p50"] for q in qs], 50),
            "ratio": percentile([q["ratio"] for q in qs], 50),
        }
    return {"per_query": per_query, "per_class": per_class}


def postgres_info(settings) -> dict:
    import psycopg

    with psycopg.connect(read_load.conninfo(settings, "owner")) as conn:
        get = lambda name: conn.execute(f"SHOW {name}").fetchone()[0]  # noqa: E731
        return {
            n: get(n)
            for n in (
                "server_version",
                "shared_buffers",
                "work_mem",
                "effective_cache_size",
                "random_page_cost",
                "jit",
            )
        } | {"version": get("server_version")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages-per-tenant", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="loader processes and index builds (2)")
    parser.add_argument("--skip-load", action="store_true", help="the database is loaded: measure only")
    parser.add_argument("--maildir", type=Path, default=BASE_DIR / "var" / "read-bench" / "maildir")
    parser.add_argument("--notmuch-account", type=int, default=2, help="account indexed by notmuch (2)")
    parser.add_argument("--no-notmuch", action="store_true")
    parser.add_argument("--requests", type=int, default=100, help="requests per endpoint class (100)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each search (5)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the HTTP and notmuch measurements repeated, alternately; figures are the median of the "
        "rounds' (3)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--setup-sql",
        type=Path,
        help="experiment: SQL run as the owner before measuring (e.g. a candidate index); "
        "it stays in the database",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plans", type=Path)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = read_load.django_setup()
    maildir = args.maildir.resolve()
    if args.skip_load:
        if not read_load.state_get(settings, "finalized"):
            parser.error(f"--skip-load: {read_load.BENCH_DB} is not (completely) loaded")
        config = read_load.state_get(settings, "config")
    else:
        read_load.load(
            settings,
            messages_per_tenant=args.messages_per_tenant,
            accounts=args.accounts,
            jobs=args.jobs,
            maildir=maildir,
        )
        config = read_load.state_get(settings, "config")
    results: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": read_load.BENCH_DB,
        "config": config,
        "load": read_load.state_get(settings, "finalized"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "postgres": postgres_info(settings),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True
        ).stdout.strip(),
        "git_dirty": bool(
            subprocess.run(
                # the code, not this benchmark's own earlier outputs
                ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results-*"],
                cwd=BASE_DIR,
                capture_output=True,
                text=True,
            ).stdout.strip()
        ),
    }
    if args.setup_sql:
        results["setup_sql"] = run_setup_sql(settings, args.setup_sql)
    workload = pick_workload(
        settings,
        accounts=config["accounts"],
        notmuch_account=args.notmuch_account,
        samples=args.requests,
        seed=args.seed,
    )
    results["workload"] = {k: v for k, v in workload.items() if k not in ("details", "threads")}
    from django.db import connections

    connections.close_all()
    work = Path(tempfile.mkdtemp(prefix="read-bench-"))
    if not args.no_notmuch:
        if shutil.which("notmuch") is None:
            parser.error(
                "notmuch is not installed: apt-get install -y notmuch python3-notmuch2 (or --no-notmuch)"
            )
        results["notmuch_index"] = notmuch_index(maildir, args.notmuch_account, work)
    fix_passwords()
    proc, port = start_gunicorn(settings, work)
    http_rounds, notmuch_rounds = [], []
    try:
        key = f"deep_path:{workload['inbox']}"
        saved = read_load.state_get(settings, key)
        for round_ in range(1, args.rounds + 1):
            log(f"round {round_} of {args.rounds}")
            http_rounds.append(
                measure_http(port, workload, requests=args.requests, repeats=args.repeats, deep_path=saved)
            )
            if saved is None and http_rounds[0]["deep_page"] == DEEP_PAGE:
                import psycopg

                saved = http_rounds[0]["deep_path"]
                with psycopg.connect(read_load.conninfo(settings, "owner"), autocommit=True) as conn:
                    read_load.state_set(conn, key, saved)
            if not args.no_notmuch:
                log("notmuch searches")
                notmuch_rounds.append(
                    notmuch_time(results["notmuch_index"]["path"], workload["queries"], work, args.repeats)
                )
    finally:
        stop_gunicorn(proc)
    results["rounds"] = args.rounds
    results["http"] = merge_http_rounds(http_rounds)
    if not args.no_notmuch:
        nm = merge_notmuch_rounds(notmuch_rounds)
        results["notmuch"] = {"index": results["notmuch_index"], **nm}
        results["ratios"] = ratios(results["http"], nm)
    log("EXPLAIN (ANALYZE, BUFFERS) of each query class")
    plans, checks = explain_all(workload, results["http"]["deep_path"])
    results["explain"] = checks
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print_report(results)
    if args.plans:
        args.plans.write_text(plans)
        print(f"\nPlans written to {args.plans}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"JSON written to {args.json}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
