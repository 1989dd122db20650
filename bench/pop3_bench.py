#!/usr/bin/env python3
"""POP3 sync benchmark: our first sync of a POP3 account against fetchmail (or
getmail6) retrieving the same mailbox into a Maildir, on a local Dovecot.

One run:

1. creates and migrates its own database, `emailclient_bench_pop3` (test
   settings; never the test, dev or IMAP bench database), with a tenant, a
   user and a POP3 account;
2. starts a throwaway Dovecot (deploy/devmail) with its POP3 listener in a
   temporary directory and writes N messages (bench/mailgen.py, ~10 KB each;
   `--corpus` puts the real corpus first) straight into the user's INBOX
   Maildir, indexed by Dovecot before anything is timed;
3. measures, each in a child process under GNU time:
   a. our first sync of the account (`account_sync`, the Celery task's
      work: RETR, parse, blobs, rows, threads), messages/s and peak memory;
   b. our no-change resync (UIDL only: nothing downloaded);
   c. the peer pulling the same mailbox into a fresh Maildir, leaving it on
      the server as ours does: fetchmail by default (it has no Maildir of
      its own: an MDA writes each message as one file, a fork per message,
      as fetchmail is deployed with procmail or maildrop), or `--peer
      getmail6` (native Maildir; getmail 6.18 here loses the race between
      its delivery child's SIGCHLD and its wait now and then, and gives up
      with "waiting child pid N timed out" after a few thousand messages);
4. checks that stored + quarantined equals the server's count, with no
   unique id stored twice, and that the peer's Maildir holds every message;
5. prints both rates and the ratio (target: at least 0.5), optionally JSON;
6. stops Dovecot, removes its files and drops the database (unless --keep).

    .venv/bin/python bench/pop3_bench.py                       # 5,000 messages
    .venv/bin/python bench/pop3_bench.py --messages 5000 --json /tmp/pop3.json
    .venv/bin/python bench/pop3_bench.py --py-spy /tmp/pop3.svg  # profile our sync

Must run as root (Dovecot, chown to the mail uid, apt-get install of the
peer when it is missing). See bench/README.md.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "deploy" / "devmail"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchdb  # noqa: E402
from sync_bench import (  # noqa: E402 - the IMAP bench's helpers, shared
    MAIL_PASSWORD,
    MAIL_USER,
    _tail,
    dovecot_index,
    git_state,
    log,
    maildir_files,
    run_child,
    settle,
)

BENCH_DB = "emailclient_bench_pop3"
SETTINGS = "emailclient.settings.test"
TARGET_RATIO = 0.5


# --- Our sync, in a child process ----------------------------------------------------


def worker_main(args) -> int:
    """The child: one `account_sync` of the account; one JSON line on stdout."""
    import resource

    settings = benchdb.django_settings(BENCH_DB, SETTINGS)
    settings.BLOB_STORAGE_DIR = args.blobs
    settings.MAIL_TLS_CA_FILE = args.ca_file
    from mailboxes.sync import account_sync

    t0 = time.perf_counter()
    report = account_sync(tenant_id=args.tenant, account_id=args.account)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "seconds": seconds,
        "new": report.new,
        "quarantined": report.quarantined,
        "bodies_fetched": report.bodies_fetched,
        "notice": report.notice,
        "cpu_user_s": usage.ru_utime,
        "cpu_sys_s": usage.ru_stime,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def our_sync(account, devmail, work: Path, name: str, py_spy: Path | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    cmd += ["--tenant", str(account.tenant_id), "--account", str(account.id)]
    cmd += ["--blobs", str(work / "blobs"), "--ca-file", str(devmail.ca_file)]
    if py_spy:
        spy = shutil.which("py-spy") or str(BASE_DIR / ".venv" / "bin" / "py-spy")
        cmd = [spy, "record", "--threads", "--subprocesses", "-o", str(py_spy), "--", *cmd]
    env = dict(os.environ, TEST_DATABASE_NAME=BENCH_DB, DJANGO_SETTINGS_MODULE=SETTINGS)
    child = run_child(cmd, env=env, stdout_path=work / f"{name}.out", stderr_path=work / f"{name}.err")
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {child.returncode}):\n{_tail(child.stderr_path)}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    handled = report["new"] + report["quarantined"]
    return {
        **report,
        "process_seconds": child.seconds,
        "maxrss_kb": child.maxrss_kb,
        "msgs_per_s": handled / report["seconds"] if report["seconds"] else 0.0,
    }


# --- The peer ------------------------------------------------------------------------


def ensure_peer(peer: str) -> str:
    binary = "getmail" if peer == "getmail6" else "fetchmail"
    if shutil.which(binary) is None:
        log(f"{binary} missing: apt-get install -y {peer}")
        subprocess.run(["apt-get", "install", "-y", peer], check=True, stdout=subprocess.DEVNULL)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (version.stdout or version.stderr).strip().splitlines()[0]


def peer_run(peer: str, devmail, work: Path, name: str) -> dict:
    import pwd

    nobody = pwd.getpwnam("nobody")
    maildir = work / f"{name}-maildir"
    for path in (maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    if peer == "getmail6":
        state = work / f"{name}-getmail"
        state.mkdir()
        rc = state / "getmailrc"
        rc.write_text(
            f"""[retriever]
type = SimplePOP3Retriever
server = 127.0.0.1
port = {devmail.pop3_port}
username = {MAIL_USER}
password = {MAIL_PASSWORD}

[destination]
type = Maildir
path = {maildir}/

[options]
verbose = 0
read_all = true
delete = false
received = false
delivered_to = false
"""
        )
        for path in (state, rc):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        # As nobody: getmail refuses to deliver as root (and forks a child
        # per message to drop privileges when told a user).
        cmd = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        cmd += ["getmail", f"--getmaildir={state}", f"--rcfile={rc}"]
    else:
        # fetchmail has no Maildir of its own: an MDA that writes each
        # message as one file (the cost of a fork per message is fetchmail's).
        rc = work / f"{name}-fetchmailrc"
        rc.write_text(
            f"""set no syslog
poll 127.0.0.1 protocol pop3 port {devmail.pop3_port} uidl
  user "{MAIL_USER}" password "{MAIL_PASSWORD}" keep fetchall
  sslproto ''
  mda "/bin/sh -c 'cat > {maildir}/new/$$.$(date +%s%N)'"
"""
        )
        rc.chmod(0o600)
        cmd = ["fetchmail", "-f", str(rc), "--idfile", str(work / f"{name}-fetchids")]
    child = run_child(cmd, env=None, stdout_path=work / f"{name}.out", stderr_path=work / f"{name}.err")
    if child.returncode not in (0, 1):  # fetchmail: 1 = no mail
        raise RuntimeError(f"{name} failed (exit {child.returncode}):\n{_tail(child.stderr_path)}")
    files = maildir_files(maildir)
    return {
        "seconds": child.seconds,
        "maxrss_kb": child.maxrss_kb,
        "cpu_user_s": child.cpu_user_s,
        "cpu_sys_s": child.cpu_sys_s,
        "maildir_files": files,
        "msgs_per_s": files / child.seconds,
    }


# --- The run ------------------------------------------------------------------------


def create_account(devmail):
    from django.contrib.auth import get_user_model

    from accounts.models import EmailAccount
    from emailclient.core.crypto import encrypt_secret
    from emailclient.core.models import Tenant, TenantMembership
    from emailclient.core.tenancy import tenant_scope

    tenant = Tenant.objects.create(slug="bench-pop3", name="Bench POP3")
    user = get_user_model().objects.create_user(username="bench", password="bench-web-password")  # noqa: S106
    with tenant_scope(tenant.id):
        TenantMembership.objects.create(tenant=tenant, user=user, role="member")
        return EmailAccount.objects.create(
            tenant=tenant,
            user=user,
            account_name="Bench POP3",
            email_address="bench@example.com",
            protocol="pop3",
            hostname="127.0.0.1",
            port=devmail.pop3_port,
            encryption="none",  # as the peer: the protocol is measured, not TLS
            username=MAIL_USER,
            password_encrypted=encrypt_secret(MAIL_PASSWORD),
        )


def database_check(account, server_messages: int) -> dict:
    from django.db.models import Count

    from emailclient.core.tenancy import tenant_scope
    from messages.models import Message, QuarantinedMessage

    with tenant_scope(account.tenant_id):
        stored = Message.objects.filter(account=account).count()
        held = QuarantinedMessage.objects.filter(account=account).count()
        twice = (
            Message.objects.filter(account=account)
            .values("pop3_uidl")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .count()
        )
    return {
        "server_messages": server_messages,
        "stored": stored,
        "quarantined": held,
        "complete": stored + held == server_messages,
        "uidls_stored_twice": twice,
    }


def run(args, settings, work: Path, state: dict) -> dict:
    import grp
    import pwd

    from devmail import DevMail, free_port
    from django.db import connections
    from mailgen import MaildirWriter, generate

    from messages.tests.corpus import corpus_files

    results: dict = {
        "messages_requested": args.messages,
        "message_size": args.message_size,
        "peer": args.peer,
        "peer_version": ensure_peer(args.peer),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "dovecot": subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip(),
        "git": git_state(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    log(f"database {BENCH_DB}: creating and migrating")
    benchdb.database_create(settings)
    state["db_created"] = True

    devmail = DevMail(
        work / "devmail", imap_port=free_port(), pop3_port=free_port(), imaps_port=None, pop3s_port=None
    )
    state["devmail"] = devmail
    devmail.start()
    devmail.add_user(MAIL_USER, MAIL_PASSWORD)
    log(f"dovecot up, POP3 on 127.0.0.1:{devmail.pop3_port}")

    corpus = corpus_files()[: args.messages] if args.corpus else []
    writer = MaildirWriter(
        devmail.maildir(MAIL_USER), pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    )
    for folder, raw, flags, when in generate(args.messages, ["INBOX"], corpus, args.seed, args.message_size):
        writer.write(folder, raw, flags, when)
    results["fill"] = {"messages": writer.count, "bytes": writer.bytes, "corpus_messages": len(corpus)}
    results["fill"]["index_seconds"] = dovecot_index(devmail)
    log(f"filled {writer.count} messages ({writer.bytes / 1e6:.0f} MB) into INBOX")

    account = create_account(devmail)
    connections.close_all()

    settle()
    log("our first sync" + (" (under py-spy)" if args.py_spy else ""))
    results["ours"] = our_sync(account, devmail, work, "ours", args.py_spy)
    log(f"ours: {results['ours']['seconds']:.1f} s, {results['ours']['msgs_per_s']:.0f} msg/s")
    results["check"] = database_check(account, writer.count)
    connections.close_all()
    settle()
    log("our no-change resync")
    results["resync"] = our_sync(account, devmail, work, "resync", None)

    runs = []
    for number in range(1, args.peer_runs + 1):
        settle()
        log(f"{args.peer}, run {number}/{args.peer_runs}")
        runs.append(peer_run(args.peer, devmail, work, f"peer-{number}"))
    by_time = sorted(runs, key=lambda r: r["seconds"])
    results["peer_result"] = {**by_time[len(by_time) // 2], "runs_seconds": [r["seconds"] for r in runs]}
    results["ratio"] = results["ours"]["msgs_per_s"] / results["peer_result"]["msgs_per_s"]
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def print_table(r: dict) -> None:
    ours, resync, peer, check = r["ours"], r["resync"], r["peer_result"], r["check"]
    fill = r["fill"]
    print()
    print(
        f"POP3 benchmark: {fill['messages']:,} messages ({fill['bytes'] / 1e6:,.0f} MB, "
        f"{fill['corpus_messages']} from the corpus) in INBOX; Dovecot {r['dovecot'].split()[0]}, "
        f"peer {r['peer_version']}, {r['machine']['cpus']} CPUs, POP3 without TLS for both"
    )
    rows = [
        ("ours, first sync", f"{ours['seconds']:.1f} s", f"{ours['msgs_per_s']:,.0f} msg/s",
         f"peak {ours['maxrss_kb'] / 1024:.0f} MB"),
        ("ours, no-change resync", f"{resync['seconds']:.2f} s",
         f"{resync['bodies_fetched']} bodies fetched", ""),
        (f"{r['peer']} into a Maildir", f"{peer['seconds']:.1f} s", f"{peer['msgs_per_s']:,.0f} msg/s",
         f"{peer['maildir_files']:,} files, peak {peer['maxrss_kb'] / 1024:.0f} MB"),
    ]  # fmt: skip
    for row in rows:
        print(f"  {row[0]:<28} {row[1]:>9}  {row[2]:<24} {row[3]}")
    verdict = "ok" if r["ratio"] >= TARGET_RATIO else "MISSED"
    print(f"  ratio ours / {r['peer']}: {r['ratio']:.2f} (target >= {TARGET_RATIO}) {verdict}")
    print(
        f"  check: {check['stored']:,} stored + {check['quarantined']} quarantined of "
        f"{check['server_messages']:,} on the server ({'complete' if check['complete'] else 'INCOMPLETE'}), "
        f"{check['uidls_stored_twice']} unique ids stored twice; peer runs {peer['runs_seconds']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--message-size", type=int, default=10_000, help="synthetic message size, bytes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", action="store_true", help="the real corpus first (some quarantined)")
    parser.add_argument("--peer", choices=["fetchmail", "getmail6"], default="fetchmail")
    parser.add_argument("--peer-runs", type=int, default=3, help="peer runs; the median counts")
    parser.add_argument("--py-spy", type=Path, help="record our first sync with py-spy into this SVG")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the database")
    # The child process's arguments.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", type=uuid.UUID, help=argparse.SUPPRESS)
    parser.add_argument("--account", type=uuid.UUID, help=argparse.SUPPRESS)
    parser.add_argument("--blobs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)
    if os.geteuid() != 0:
        parser.error("run as root (Dovecot, chown to the mail uid, apt-get)")

    settings = benchdb.django_settings(BENCH_DB, SETTINGS)
    work = Path(tempfile.mkdtemp(prefix="pop3-bench-"))
    os.chmod(work, 0o755)  # noqa: S103 - the peer delivers as nobody (getmail refuses root)
    state: dict = {}
    try:
        results = run(args, settings, work, state)
        print_table(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        return 0 if results["check"]["complete"] and not results["check"]["uidls_stored_twice"] else 1
    finally:
        devmail = state.get("devmail")
        if devmail is not None:
            devmail.stop()
        if not args.keep:
            if state.get("db_created"):
                benchdb.database_drop(settings)
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work} and database {BENCH_DB}")


if __name__ == "__main__":
    sys.exit(main())
