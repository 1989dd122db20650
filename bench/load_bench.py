#!/usr/bin/env python3
"""Load benchmark (issue 16): wrk through nginx in front of gunicorn, many
users of two tenants reading their folders and searching.

    .venv/bin/python bench/load_bench.py                       # loads 2 x 50,000 first (~5 min)
    .venv/bin/python bench/load_bench.py --connections 50 --duration 60 --json out.json

Not a timed test. One run:

1. loads (or reuses) `emailclient_loadbench` with bench/read_load.py, the
   read benchmark's generator: two tenants of --messages-per-tenant messages
   (default 50,000: 100,000 in all), 100 accounts of Zipf sizes and one
   member each per tenant, 10 folders an account;
2. starts gunicorn with the deploy defaults (deploy/gunicorn.conf.py: 2 x
   CPUs + 1 workers, at most 8; 4 threads; worker recycling at 1,000
   requests) and production settings on the runtime role, and in front of
   it Debian's nginx with deploy/nginx as the container gets it
   (deploy/nginx_prefix.py: TLS, the limits, gzip), on loopback high ports;
3. mints an access token for each of the 200 members (as logins would; the
   login limit, 5 a minute, is not what this measures) and writes a request
   list: each member's INBOX first page (80 %) and a search in the member's
   own mail (20 %, --search-share: a word of the everyday vocabulary, a
   mid-frequency pseudo-word, or both), shuffled;
4. runs `wrk --latency` (Debian's wrk), --connections connections for
   --duration seconds, with bench/load_bench.lua rotating the requests,
   users and tenants; prints requests per second, p50/p99 overall (wrk's)
   and per kind of request (from nginx's access log, $request_time), and
   the answers by status: non-2xx and 5xx counted separately.

What the limits see. nginx counts its limits per client address, and wrk
comes from one. The bench gives each member an address of its own
(10.77.t.u) in X-Forwarded-For and adds to nginx, for this run only, a
conf.d file trusting that header from loopback (realip: set_real_ip_from
127.0.0.1); the production files are unchanged and their limits apply per
member, 100 r/s each. The service's per-user throttles keep their defaults
(600/m, searches 120/m). Its per-tenant one (3,000/m) would cap two
tenants at 100 requests a second, which is a limit, not the service's
speed: it is raised to 1,000,000/m for the run, and the report says so.
"""

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
os.environ.setdefault("READ_BENCH_DB", "emailclient_loadbench")
# The tokens minted here must verify in gunicorn: one key for both.
os.environ.setdefault("JWT_SIGNING_KEY", secrets.token_urlsafe(48))
os.environ.setdefault("JWT_ACCESS_TOKEN_MINUTES", "240")
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(BASE_DIR / "deploy"))

import nginx_prefix  # noqa: E402
import read_load  # noqa: E402
import read_mailgen as mailgen  # noqa: E402

REDIS_URL = os.environ.get("LOAD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
log = read_load.log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise SystemExit(f"{what} did not open port {port}")


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def gunicorn_env(settings, port: int) -> dict:
    db = settings.DATABASES["default"]
    admin = settings.DATABASES["admin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "DJANGO_", "TEST_DATABASE"))}
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_MAX_REQUESTS", "GUNICORN_TIMEOUT"):
        env.pop(name, None)  # the deploy defaults
    env.update(
        DJANGO_SETTINGS_MODULE="emailclient.settings.production",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        DATABASE_ADMIN_URL=f"postgres://{admin['USER']}@{admin['HOST']}:{admin['PORT']}/{admin['NAME']}",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(48),
        JWT_SIGNING_KEY=os.environ["JWT_SIGNING_KEY"],
        JWT_ACCESS_TOKEN_MINUTES=os.environ["JWT_ACCESS_TOKEN_MINUTES"],
        CREDENTIAL_ENCRYPTION_KEYS=",".join(settings.CREDENTIAL_ENCRYPTION_KEYS),
        ALLOWED_HOSTS="127.0.0.1",
        TRUSTED_PROXY_HOPS="1",  # nginx in front, as in the stack
        REDIS_URL=REDIS_URL,
        CACHE_KEY_PREFIX="emailclient-loadbench",
        API_RATE_LIMIT_TENANT="1000000/m",  # see the module's text
        LOG_LEVEL="WARNING",
        BLOB_STORAGE_DIR=str(BASE_DIR / "var" / "load-bench" / "blobs"),
        PORT=str(port),
    )
    return env


def tokens(settings, accounts: int) -> list[tuple[int, int, str]]:
    """(tenant index, account index, access token) of every member."""
    from django.contrib.auth import get_user_model
    from django.db import connections
    from rest_framework_simplejwt.tokens import RefreshToken

    users = {u.username: u for u in get_user_model().objects.filter(username__contains="-user")}
    out = []
    for t in range(len(read_load.TENANT_SLUGS)):
        for a in range(accounts):
            user = users[read_load.member_username(t, a)]
            out.append((t, a, str(RefreshToken.for_user(user).access_token)))
    connections.close_all()
    return out


def request_lines(
    members: list[tuple[int, int, str]], count: int, seed: int, search_share: float
) -> tuple[list[str], int]:
    """`count` requests, shuffled: (lines, searches among them)."""
    rng = random.Random(seed)
    words = mailgen.Vocabulary().words
    everyday = ["meeting", "report", "review", "project", "invoice", "update", "budget", "team"]
    searches = 0
    lines = []
    for i in range(count):
        t, a, token = members[i % len(members)]
        slug = read_load.TENANT_SLUGS[t]
        if rng.random() < search_share:
            searches += 1
            kind = rng.randrange(3)
            pseudo = words[rng.randrange(3_000, 20_000)]
            query = {0: rng.choice(everyday), 1: pseudo, 2: f"{rng.choice(everyday)} {pseudo}"}[kind]
            path = f"/api/sync/search?query={query.replace(' ', '+')}&account={read_load.account_id(t, a)}"
        else:
            path = f"/api/messages/?folder={read_load.folder_id(t, a, 'INBOX')}"
        lines.append(f"{path}\t{token}\t{slug}\t10.77.{t}.{a + 1}")
    order = list(range(len(lines)))
    rng.shuffle(order)
    return [lines[i] for i in order], searches


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


LOG_LINE = re.compile(r'^\S+ "GET (\S+) [^"]*" (\d{3}) \d+ ([\d.]+)s ')


def nginx_figures(access_log: Path) -> dict:
    """Per kind of request, from nginx's access log ($request_time, ms)."""
    kinds: dict[str, dict] = {}
    for line in access_log.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        path, status, seconds = m.group(1), int(m.group(2)), float(m.group(3))
        if status == 499:  # the requests in flight when wrk stopped, cut by it: not answers
            continue
        kind = "folder page" if path.startswith("/api/messages") else "search" if "search" in path else path
        k = kinds.setdefault(kind, {"ms": [], "statuses": {}})
        k["ms"].append(seconds * 1000)
        k["statuses"][status] = k["statuses"].get(status, 0) + 1
    return {
        kind: {
            "requests": len(k["ms"]),
            "p50_ms": percentile(k["ms"], 50),
            "p99_ms": percentile(k["ms"], 99),
            "statuses": dict(sorted(k["statuses"].items())),
        }
        for kind, k in kinds.items()
    }


def database_size(settings) -> dict:
    import psycopg

    with psycopg.connect(read_load.conninfo(settings, "admin")) as conn:
        messages = conn.execute("SELECT count(*) FROM email_messages").fetchone()[0]
        tenants = conn.execute("SELECT count(*) FROM tenants").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    return {"messages": messages, "tenants": tenants, "database_size": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages-per-tenant", type=int, default=50_000)
    parser.add_argument("--accounts", type=int, default=100, help="accounts and members per tenant (100)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=int, default=60, help="seconds (60)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--requests", type=int, default=20_000, help="distinct requests in the rotation")
    parser.add_argument("--search-share", type=float, default=0.2, help="searches among the requests (0.2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None or (shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists()):
        raise SystemExit("needs wrk and nginx: bash deploy/install-tools.sh wrk")

    settings = read_load.django_setup()
    read_load.load(
        settings, messages_per_tenant=args.messages_per_tenant, accounts=args.accounts, jobs=2, maildir=None
    )
    size = database_size(settings)
    members = tokens(settings, args.accounts)
    lines, searches = request_lines(members, args.requests, args.seed, args.search_share)

    work = Path(tempfile.mkdtemp(prefix="load-bench-"))
    web = nginx = None
    try:
        (work / "requests.tsv").write_text("\n".join(lines) + "\n")
        web_port, https_port, http_port = free_port(), free_port(), free_port()
        web = subprocess.Popen(
            [str(BASE_DIR / ".venv" / "bin" / "gunicorn"),
             "-c", str(BASE_DIR / "deploy" / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{web_port}",
             "--access-logfile", "/dev/null", "emailclient.wsgi"],
            cwd=BASE_DIR, env=gunicorn_env(settings, web_port), stdin=subprocess.DEVNULL,
            stdout=(work / "gunicorn.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_port(web_port, web, "gunicorn")
        bench_conf = (
            "# bench only: each simulated client's address from X-Forwarded-For (wrk is one address)\n"
            "set_real_ip_from 127.0.0.1;\nreal_ip_header X-Forwarded-For;\n"
        )
        command = nginx_prefix.build(
            work / "nginx",
            upstream=f"127.0.0.1:{web_port}",
            http_port=http_port,
            https_port=https_port,
            extra_conf={"00-bench-realip.conf": bench_conf},
        )
        nginx = subprocess.Popen(
            command, stdout=(work / "access.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_port(https_port, nginx, "nginx")
        warm = subprocess.run(
            [wrk, "-t1", "-c4", "-d20s", "--timeout", "15s", "-s", str(BASE_DIR / "bench" / "load_bench.lua"),
             f"https://127.0.0.1:{https_port}", "--", str(work / "requests.tsv")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if warm.returncode:
            raise SystemExit(f"wrk failed: {warm.stdout} {warm.stderr}")
        log(f"warm-up done: {warm.stdout.splitlines()[-1] if warm.stdout else ''}")
        (work / "access.log").write_bytes(b"")  # the warm-up's lines out (nginx appends: O_APPEND)
        log(f"starting wrk: {args.connections} connections, {args.duration} s; load {os.getloadavg()}")
        run = subprocess.run(
            [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
             "--timeout", "10s", "-s", str(BASE_DIR / "bench" / "load_bench.lua"),
             f"https://127.0.0.1:{https_port}", "--", str(work / "requests.tsv")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if run.returncode:
            raise SystemExit(f"wrk failed: {run.stdout} {run.stderr}")
        time.sleep(1)
        per_kind = nginx_figures(work / "access.log")
    finally:
        stop(nginx)
        stop(web)
    out = run.stdout
    status_line = re.search(r"^STATUSES(.*)$", out, re.M).group(1)
    statuses = {int(k): int(v) for k, v in re.findall(r"(\d{3})=(\d+)", status_line)}
    latency_line = out.split("LATENCY_US")[1]
    latency = {k: int(v) / 1000 for k, v in re.findall(r"(p50|p90|p99|max)=(\d+)", latency_line)}
    summary = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^SUMMARY(.*)$", out, re.M).group(1)))
    total = int(summary["requests"])
    seconds = int(summary["duration_us"]) / 1e6
    result = {
        "data": size,
        "members": len(members),
        "rotation": {"requests": len(lines), "searches": searches},
        "wrk": {"connections": args.connections, "seconds": seconds, "threads": args.threads},
        "requests": total,
        "requests_per_second": total / seconds,
        "latency_ms": latency,
        "statuses": dict(sorted(statuses.items())),
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "5xx": sum(n for s, n in statuses.items() if s >= 500),
        "socket_errors": {k: int(v) for k, v in summary.items() if k.startswith("errors_")},
        "per_kind": per_kind,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "bench_only": "API_RATE_LIMIT_TENANT=1000000/m; nginx realip: an address a member",
    }
    print(json.dumps(result, indent=2))
    folder = per_kind.get("folder page", {})
    rps = result["requests_per_second"]
    kinds = "\n".join(
        f"  {kind}: {k['requests']} requests, p50 {k['p50_ms']:.1f} ms, p99 {k['p99_ms']:.1f} ms,"
        f" {k['statuses']}"
        for kind, k in sorted(per_kind.items())
    )
    print(
        f"\n{size['messages']:,} messages, {size['tenants']} tenants, {len(members)} members;"
        f" {args.connections} connections for {seconds:.0f} s,"
        " through nginx (TLS) to gunicorn (deploy defaults)\n"
        f"{rps:.1f} requests/s; p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms (all); "
        f"non-2xx {result['non_2xx']}, 5xx {result['5xx']}\n{kinds}"
        + f"\ntarget: zero 5xx ({'met' if result['5xx'] == 0 else 'MISSED'}), folder page p99 < 100 ms "
        f"({'met' if folder.get('p99_ms', 1e9) < 100 else 'MISSED'})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
