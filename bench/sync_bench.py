#!/usr/bin/env python3
"""IMAP sync benchmark: our sync engine against mbsync, on a local Dovecot.

One run:

1. creates and migrates its own database, `emailclient_bench` (test settings
   with TEST_DATABASE_NAME=emailclient_bench; never the test or dev database),
   with a tenant, a user and an IMAP account;
2. starts a throwaway Dovecot (deploy/devmail) in a temporary directory and
   fills one user's Maildir with N messages over F folders: the real corpus
   (../shared/corpus) and synthetic ~10 KB messages (bench/mailgen.py),
   written straight into the Maildir++ and indexed by Dovecot;
3. measures, each in a child process:
   a. our initial sync of the whole account (messages/s, worker peak memory),
   b. our no-change resync (time, bodies fetched: must be 0),
   c. mbsync pulling the same mailbox into a Maildir, and its no-change run;
4. checks that stored + quarantined equals the server's count, per folder;
5. prints a table with the targets (bench/README.md), optionally writes JSON;
6. stops Dovecot and removes its files and the database (unless --keep).

    .venv/bin/python bench/sync_bench.py                      # 10,000 messages
    .venv/bin/python bench/sync_bench.py --messages 100000 --json bench/results-100k.json

Must run as root (Dovecot, and chown to the mail uid). See bench/README.md.
"""

import argparse
import contextlib
import json
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
sys.path.insert(0, str(BASE_DIR / "deploy" / "devmail"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchdb  # noqa: E402

BENCH_DB = "emailclient_bench"
SETTINGS = "emailclient.settings.test"
MAIL_USER = "bench"
MAIL_PASSWORD = "bench-password"  # noqa: S105 - a throwaway local Dovecot user

# Targets (bench/README.md).
TARGET_RATIO_MIN, TARGET_RATIO_GOAL = 0.5, 1.0
TARGET_RESYNC_SECONDS = 1.0  # for 100,000 messages in 10 folders
TARGET_PEAK_MB = 300.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Child processes ---------------------------------------------------------------


@dataclass
class Child:
    returncode: int
    seconds: float
    maxrss_kb: int
    cpu_user_s: float
    cpu_sys_s: float
    stdout: str
    stderr_path: Path


GNU_TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def run_child(cmd: list[str], *, env: dict | None, stdout_path: Path, stderr_path: Path) -> Child:
    """Run `cmd` and return its wall time and peak RSS.

    A child forked from this (large, Django-loaded) process inherits its
    RSS high-water mark through fork and exec: Linux keeps the pre-exec
    mm's peak in the child's ru_maxrss. So the command runs under GNU time,
    a small process whose own child starts clean; its %M is the true peak.
    Without GNU time, wait4()'s ru_maxrss is used (an upper bound)."""
    rss_path = stdout_path.with_suffix(".maxrss")
    full = [GNU_TIME, "-f", "%M %U %S", "-o", str(rss_path), *cmd] if GNU_TIME else cmd
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss, user, system = usage.ru_maxrss, usage.ru_utime, usage.ru_stime
    if GNU_TIME:
        with contextlib.suppress(OSError, ValueError, IndexError):
            last = rss_path.read_text().splitlines()[-1].split()
            maxrss, user, system = int(last[0]), float(last[1]), float(last[2])
    return Child(
        proc.returncode, seconds, maxrss, user, system, stdout_path.read_text(errors="replace"), stderr_path
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- Django and the database ----------------------------------------------------------


def django_setup():
    return benchdb.django_settings(BENCH_DB, SETTINGS)


def create_account(devmail, encryption: str):
    """A tenant, a member and their IMAP account on the local Dovecot."""
    from django.contrib.auth import get_user_model

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
            account_name="Bench",
            email_address="bench@example.com",
            protocol="imap",
            hostname="127.0.0.1",
            port=devmail.imap_port,
            encryption=encryption,
            username=MAIL_USER,
            password_encrypted=encrypt_secret(MAIL_PASSWORD),
        )
    return account


def database_counts(account) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Per folder: stored messages, quarantined messages; and quarantine reasons."""
    from django.db.models import Count

    from emailclient.core.tenancy import tenant_scope
    from messages.models import Message, QuarantinedMessage

    with tenant_scope(account.tenant_id):
        stored = dict(
            Message.objects.filter(account=account)
            .values("folder__name")
            .annotate(n=Count("id"))
            .values_list("folder__name", "n")
        )
        quarantined = dict(
            QuarantinedMessage.objects.filter(account=account)
            .values("folder__name")
            .annotate(n=Count("id"))
            .values_list("folder__name", "n")
        )
        reasons: dict[str, int] = {}
        for reason in QuarantinedMessage.objects.filter(account=account).values_list("reason", flat=True):
            key = re.sub(r"\d+", "N", reason)[:80]
            reasons[key] = reasons.get(key, 0) + 1
    return stored, quarantined, reasons


# --- The mail server ---------------------------------------------------------------------


def folder_names(count: int) -> list[str]:
    from mailgen import FOLDERS

    return (FOLDERS + [f"Folder{n}" for n in range(len(FOLDERS) + 1, count + 1)])[:count]


def fill_maildir(devmail, folders: list[str], count: int, corpus: list[Path], seed: int, size: int) -> dict:
    import grp
    import pwd

    from mailgen import MaildirWriter, generate

    writer = MaildirWriter(
        devmail.maildir(MAIL_USER), pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    )
    t0 = time.perf_counter()
    for folder, raw, flags, when in generate(count, folders, corpus, seed, size):
        writer.write(folder, raw, flags, when)
    return {"seconds": time.perf_counter() - t0, "bytes": writer.bytes, "messages": writer.count}


def fill_append(devmail, folders: list[str], count: int, corpus: list[Path], seed: int, size: int) -> dict:
    """The slow way, for comparison: one IMAP APPEND per message."""
    from mailgen import generate

    names = {"S": b"\\Seen", "F": b"\\Flagged", "R": b"\\Answered", "D": b"\\Draft"}
    client = imap_client(devmail)
    created = {"INBOX"}
    t0 = time.perf_counter()
    total = 0
    for folder, raw, flags, when in generate(count, folders, corpus, seed, size):
        if folder not in created:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            created.add(folder)
        client.append(
            folder,
            raw,
            flags=[names[f] for f in flags],
            msg_time=datetime.fromtimestamp(when, tz=UTC),
        )
        total += len(raw)
    client.logout()
    return {"seconds": time.perf_counter() - t0, "bytes": total, "messages": count}


def imap_client(devmail):
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port=devmail.imap_port, ssl=False, timeout=600)
    client.login(MAIL_USER, MAIL_PASSWORD)
    return client


def dovecot_index(devmail) -> float:
    """Let Dovecot index every folder (and compute virtual sizes) before any
    timed client comes, so neither client pays for indexing."""
    t0 = time.perf_counter()
    for args in (
        ["index", "-u", MAIL_USER, "*"],
        ["mailbox", "status", "-u", MAIL_USER, "messages uidnext vsize", "*"],
    ):
        subprocess.run(
            [shutil.which("doveadm") or "/usr/bin/doveadm", "-c", str(devmail.config_file), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    return time.perf_counter() - t0


def server_counts(devmail) -> dict[str, int]:
    client = imap_client(devmail)
    try:
        counts = {}
        for flags, _, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            counts[name] = int(client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"])
        return counts
    finally:
        client.logout()


def uid_flag_check(devmail, account) -> dict:
    """Per folder: UIDs on the server but neither stored nor quarantined,
    UIDs we hold that the server has not, and stored messages whose flags
    differ from the server's (as the tests' assert_in_step compares them)."""
    from emailclient.core.tenancy import tenant_scope
    from mailboxes.sync import flag_fields
    from messages.models import Message, QuarantinedMessage

    client = imap_client(devmail)
    try:
        server: dict[str, dict[int, tuple]] = {}
        for flags, _, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            info = client.select_folder(name, readonly=True)
            uids = client.search(["ALL"]) if info.get(b"EXISTS") else []
            fetched = client.fetch(uids, ["FLAGS"]) if uids else {}
            server[name] = {
                uid: tuple(flag_fields(tuple(f.decode() for f in data[b"FLAGS"]))["flags"])
                for uid, data in fetched.items()
            }
    finally:
        client.logout()
    ours: dict[str, dict[int, tuple | None]] = {}
    duplicates = 0
    with tenant_scope(account.tenant_id):
        rows = list(Message.objects.filter(account=account).values_list("folder__name", "imap_uid", "flags"))
        rows += [
            (name, uid, None)
            for name, uid in QuarantinedMessage.objects.filter(account=account).values_list(
                "folder__name", "imap_uid"
            )
        ]
    for name, uid, flags in rows:
        folder = ours.setdefault(name, {})
        duplicates += uid in folder
        folder[uid] = tuple(flags) if flags is not None else None
    problems = {}
    for name in sorted(set(server) | set(ours)):
        theirs, mine = server.get(name, {}), ours.get(name, {})
        missing = len(set(theirs) - set(mine))
        extra = len(set(mine) - set(theirs))
        flags = sum(1 for uid, f in mine.items() if f is not None and uid in theirs and theirs[uid] != f)
        if missing or extra or flags:
            problems[name] = {"missing": missing, "extra": extra, "flags_differ": flags}
    return {"folders": problems, "duplicate_uids": duplicates}


def dovecot_problems(devmail) -> list[str]:
    try:
        lines = devmail.log_file.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if re.search(r"\b(Error|Panic|Fatal|Warning)\b", line)]


# --- mbsync ---------------------------------------------------------------------------


def mbsync_version() -> str:
    out = subprocess.run(["mbsync", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def write_mbsyncrc(devmail, work: Path, encryption: str, run: int) -> tuple[Path, Path]:
    maildir = work / f"mbsync-maildir-{run}"
    maildir.mkdir()
    # isync 1.4 spells it SSLType (TLSType from 1.5 on), and matches the
    # certificate's DNS names only (not its IP address): Host localhost.
    tls = "STARTTLS" if encryption == "starttls" else "None"
    major_minor = tuple(int(x) for x in re.findall(r"\d+", mbsync_version())[:2] or (1, 4))
    tls_key = "TLSType" if major_minor >= (1, 5) else "SSLType"
    rc = work / f"mbsyncrc-{run}"
    rc.write_text(
        f"""IMAPAccount bench
Host localhost
Port {devmail.imap_port}
User {MAIL_USER}
Pass {MAIL_PASSWORD}
{tls_key} {tls}
CertificateFile {devmail.ca_file}

IMAPStore bench-remote
Account bench

MaildirStore bench-local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel bench
Far :bench-remote:
Near :bench-local:
Patterns *
Create Near
Sync Pull
Expunge None
SyncState *
"""
    )
    return rc, maildir


def run_mbsync(rc: Path, maildir: Path, work: Path, name: str) -> dict:
    child = run_child(
        ["mbsync", "-a", "-c", str(rc)],
        env=None,
        stdout_path=work / f"{name}.out",
        stderr_path=work / f"{name}.err",
    )
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {child.returncode}):\n{_tail(child.stderr_path)}")
    files = maildir_files(maildir)
    output = child.stdout + child.stderr_path.read_text(errors="replace")
    skipped = len(re.findall(r"^Warning: message \d+ from far side .*skipping", output, re.MULTILINE))
    return {
        "seconds": child.seconds,
        "maxrss_kb": child.maxrss_kb,
        "cpu_user_s": child.cpu_user_s,
        "cpu_sys_s": child.cpu_sys_s,
        "maildir_files": files,
        "skipped": skipped,
        # Messages mbsync dealt with (stored, or refused with a warning) per second.
        "msgs_per_s": (files + skipped) / child.seconds,
    }


def maildir_files(root: Path) -> int:
    return sum(
        1 for dirpath, _, files in os.walk(root) if os.path.basename(dirpath) in ("cur", "new") for _ in files
    )


# --- Main ---------------------------------------------------------------------------------


def git_state() -> dict:
    def git(*args):
        out = subprocess.run(["git", *args], cwd=BASE_DIR, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--porcelain").splitlines()}


def settle() -> None:
    """Before each timed step: write back dirty pages (the previous step's
    files and rows), so that no step pays for another's writeback."""
    os.sync()
    time.sleep(0.5)


def worker(args_list: list[str], work: Path, name: str) -> tuple[Child, dict]:
    env = dict(os.environ, TEST_DATABASE_NAME=BENCH_DB, DJANGO_SETTINGS_MODULE=SETTINGS)
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "sync_worker.py"), *args_list]
    child = run_child(cmd, env=env, stdout_path=work / f"{name}.out", stderr_path=work / f"{name}.err")
    if child.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {child.returncode}):\n{_tail(child.stderr_path)}")
    return child, json.loads(child.stdout.strip().splitlines()[-1])


def run(args, settings, work: Path, state: dict) -> dict:
    from devmail import DevMail, free_port

    from messages.tests.corpus import corpus_files

    results: dict = {
        "messages_requested": args.messages,
        "message_size": args.message_size,
        "switch_interval": args.switch_interval,
        "folders_requested": args.folders,
        "encryption": args.tls,
        "fill": args.fill,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "mbsync_version": mbsync_version(),
        "dovecot": subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip(),
        "git": git_state(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    log(f"database {BENCH_DB}: creating and migrating")
    t0 = time.perf_counter()
    benchdb.database_create(settings)
    state["db_created"] = True
    results["db_setup_seconds"] = time.perf_counter() - t0

    devmail = DevMail(
        work / "devmail", imap_port=free_port(), pop3_port=None, imaps_port=None, pop3s_port=None
    )
    state["devmail"] = devmail
    devmail.start()
    devmail.add_user(MAIL_USER, MAIL_PASSWORD)
    log(f"dovecot up on 127.0.0.1:{devmail.imap_port} ({work / 'devmail'})")

    folders = folder_names(args.folders)
    corpus = corpus_files() if not args.no_corpus else []
    corpus = corpus[: args.messages]
    log(f"filling {args.messages} messages ({len(corpus)} from the corpus) into {len(folders)} folders")
    fill = (fill_maildir if args.fill == "maildir" else fill_append)(
        devmail, folders, args.messages, corpus, args.seed, args.message_size
    )
    fill["corpus_messages"] = len(corpus)
    fill["method"] = args.fill
    fill["index_seconds"] = dovecot_index(devmail)
    results["fill"] = fill
    log(
        f"filled in {fill['seconds']:.1f}s ({fill['messages'] / fill['seconds']:.0f} msg/s, "
        f"{fill['bytes'] / 1e6:.0f} MB); dovecot indexed in {fill['index_seconds']:.1f}s"
    )
    server = server_counts(devmail)
    server_total = sum(server.values())
    results["server"] = {"folders": len(server), "messages": server_total, "per_folder": server}
    if server_total != args.messages:
        log(f"WARNING: the server holds {server_total} messages, {args.messages} were written")

    account = create_account(devmail, args.tls)
    from django.db import connections

    connections.close_all()
    blobs = work / "blobs"
    common = ["--tenant", str(account.tenant_id), "--account", str(account.id)]
    common += ["--blobs", str(blobs), "--ca-file", str(devmail.ca_file)]

    # a. Initial sync.
    settle()
    log("our initial sync" + (" (under cProfile)" if args.profile else ""))
    profile = ["--profile", str(args.profile)] if args.profile else ["--phases"]
    profile.append("--index")
    if args.switch_interval:
        profile += ["--switch-interval", str(args.switch_interval)]
    child, report = worker(common + profile, work, "initial")
    stored = report["new"] + report["quarantined"]
    results["initial"] = {
        **report,
        "process_seconds": child.seconds,
        "worker_maxrss_kb": child.maxrss_kb,
        "stored_plus_quarantined": stored,
        "msgs_per_s": stored / report["seconds"],
        "profiled": bool(args.profile),
    }
    log(f"initial sync: {stored} in {report['seconds']:.1f}s, peak {child.maxrss_kb / 1024:.0f} MB")

    db_stored, db_quarantined, reasons = database_counts(account)
    connections.close_all()
    mismatches = {
        name: {"server": n, "stored": db_stored.get(name, 0), "quarantined": db_quarantined.get(name, 0)}
        for name, n in server.items()
        if db_stored.get(name, 0) + db_quarantined.get(name, 0) != n
    }
    results["check"] = {
        "server_messages": server_total,
        "db_stored": sum(db_stored.values()),
        "db_quarantined": sum(db_quarantined.values()),
        "report_equals_server": stored == server_total,
        "per_folder_mismatches": mismatches,
        "quarantine_reasons": reasons,
        "uids_and_flags": uid_flag_check(devmail, account),
    }
    connections.close_all()

    # b. No-change resync.
    settle()
    log("our no-change resync")
    child, report = worker(common, work, "resync")
    results["resync"] = {**report, "process_seconds": child.seconds, "worker_maxrss_kb": child.maxrss_kb}

    # c. mbsync: initial pulls into fresh Maildirs (median of --mbsync-runs),
    # then a no-change run on the last one.
    runs = []
    for run_number in range(1, args.mbsync_runs + 1):
        rc, maildir = write_mbsyncrc(devmail, work, args.tls, run_number)
        settle()
        log(f"mbsync, initial pull {run_number}/{args.mbsync_runs}")
        runs.append(run_mbsync(rc, maildir, work, f"mbsync-{run_number}"))
    # mbsync sleeps while a Maildir directory's mtime is the current second
    # (its guard against timestamp races): wait that out, it is not sync work.
    time.sleep(1.1)
    settle()
    log("mbsync, no-change run")
    results["mbsync_resync"] = run_mbsync(rc, maildir, work, "mbsync-resync")
    by_time = sorted(runs, key=lambda r: r["seconds"])
    results["mbsync"] = {**by_time[len(by_time) // 2], "runs_seconds": [r["seconds"] for r in runs]}
    results["ratio"] = results["initial"]["msgs_per_s"] / results["mbsync"]["msgs_per_s"]
    results["dovecot_log_problems"] = dovecot_problems(devmail)[:50]
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_table(r: dict) -> None:
    init, resync, mb, mbr = r["initial"], r["resync"], r["mbsync"], r["mbsync_resync"]
    peak_mb = max(init["worker_maxrss_kb"], resync["worker_maxrss_kb"]) / 1024
    ratio = r["ratio"]
    n = r["server"]["messages"]
    fill = r["fill"]
    check = r["check"]
    print()
    print(
        f"Sync benchmark: {n:,} messages ({fill['corpus_messages']} corpus + "
        f"{fill['messages'] - fill['corpus_messages']:,} synthetic, {fill['bytes'] / 1e6:,.0f} MB) "
        f"in {r['server']['folders']} folders; Dovecot {r['dovecot'].split()[0]}, {r['mbsync_version']}, "
        f"encryption {r['encryption']}, {r['machine']['cpus']} CPUs"
    )
    print(
        f"Fill ({fill['method']}): "
        f"{fill['seconds']:.1f} s ({fill['messages'] / fill['seconds']:,.0f} msg/s), "
        f"Dovecot indexing {fill['index_seconds']:.1f} s"
    )
    if init["profiled"]:
        print("NOTE: the initial sync ran under cProfile: its time is inflated, not a benchmark figure.")
    rows = [
        ("measure", "figure", "target", ""),
        (
            "a. initial sync, ours",
            f"{init['seconds']:.1f} s, {init['msgs_per_s']:,.0f} msg/s",
            "",
            "",
        ),
        (
            "   then search indexing",
            f"{init['index_seconds']:.1f} s for {init['indexed']:,} messages "
            f"({init['indexed'] / max(init['index_seconds'], 1e-9):,.0f} msg/s)",
            "(after the sync; not in its rate)",
            "",
        ),
        (
            "   stored + quarantined",
            f"{init['new']:,} + {init['quarantined']:,} = {init['stored_plus_quarantined']:,}",
            f"= server count {n:,}",
            verdict(init["stored_plus_quarantined"] == n and not r["check"]["per_folder_mismatches"]),
        ),
        (
            "   UIDs and flags",
            "; ".join(
                f"{name}: {', '.join(f'{v} {k}' for k, v in m.items() if v)}"
                for name, m in check["uids_and_flags"]["folders"].items()
            )
            or "every folder equal to the server",
            "= server, per folder",
            verdict(not check["uids_and_flags"]["folders"] and not check["uids_and_flags"]["duplicate_uids"]),
        ),
        ("   worker process wall", f"{init['process_seconds']:.1f} s (with startup and indexing)", "", ""),
        ("c. initial sync, mbsync", f"{mb['seconds']:.1f} s, {mb['msgs_per_s']:,.0f} msg/s", "", ""),
        (
            "   ours / mbsync",
            f"{ratio:.2f}x",
            f">= {TARGET_RATIO_MIN}x (goal {TARGET_RATIO_GOAL}x)",
            verdict(ratio >= TARGET_RATIO_MIN) + (" (goal met)" if ratio >= TARGET_RATIO_GOAL else ""),
        ),
        (
            "b. no-change resync, ours",
            f"{resync['seconds']:.3f} s, {resync['bodies_fetched']} bodies",
            f"< {TARGET_RESYNC_SECONDS:.0f} s at 100k/10 folders, 0 bodies",
            verdict(resync["seconds"] < TARGET_RESYNC_SECONDS and resync["bodies_fetched"] == 0),
        ),
        (
            "   resync report",
            f"{resync['new']} new, {resync['updated']} upd, {resync['expunged']} exp",
            "all 0",
            verdict(resync["new"] == resync["updated"] == resync["expunged"] == 0),
        ),
        ("   worker process wall", f"{resync['process_seconds']:.2f} s (with startup)", "", ""),
        ("   no-change, mbsync", f"{mbr['seconds']:.3f} s", "(reference)", ""),
        (
            "d. worker peak memory",
            f"{peak_mb:.0f} MB (initial {init['worker_maxrss_kb'] / 1024:.0f}, "
            f"resync {resync['worker_maxrss_kb'] / 1024:.0f})",
            f"< {TARGET_PEAK_MB:.0f} MB at any size",
            verdict(peak_mb < TARGET_PEAK_MB),
        ),
        (
            "   cross-check",
            f"VmHWM seen by the worker: {init['vm_hwm_kb'] / 1024:.0f} MB",
            "",
            "",
        ),
        ("   mbsync peak memory", f"{mb['maxrss_kb'] / 1024:.0f} MB", "(reference)", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if init.get("phases"):
        print(
            f"\nWhere the initial sync's {init['seconds']:.1f} s go (exclusive wall time per step and thread;"
        )
        print("other threads run at the same time as the main thread, so their shares add up beyond 100%;")
        print("second column: the thread's own CPU time in the step, the rest is waiting):")
        for phase in init["phases"]:
            share = 100 * phase["seconds"] / init["seconds"]
            if share < 0.5 and phase["seconds"] < 0.5:
                continue
            calls = f"{phase['calls']:,} calls" if phase["calls"] else ""
            cpu = phase.get("cpu_seconds")
            cpu = f"{cpu:7.2f} s" if cpu is not None else " " * 9
            where = f"{phase['thread']:<20} {phase['step']:<44}"
            print(f"  {share:5.1f}%  {phase['seconds']:8.2f} s  {cpu}  {where} {calls}")
        print("  (steps under 0.5% not shown)")
    pg = init.get("postgres_cpu_s")
    print(
        f"\nCPU, initial sync: worker {init['cpu_user_s']:.1f} s user + {init['cpu_sys_s']:.1f} s sys"
        + (f", PostgreSQL server {pg:.1f} s" if pg is not None else "")
        + f"; mbsync (median run) {mb['cpu_user_s']:.1f} s user + {mb['cpu_sys_s']:.1f} s sys"
        + f"; mbsync initial runs: {', '.join(f'{t:.2f}' for t in mb['runs_seconds'])} s"
    )
    if mb["maildir_files"] + mb["skipped"] != n:
        print(f"WARNING: mbsync's Maildir holds {mb['maildir_files']} messages, the server {n}")
    if mb["skipped"]:
        print(f"mbsync skipped {mb['skipped']} message(s) ('incomplete header'), counted as handled")
    check = r["check"]
    if check["per_folder_mismatches"]:
        print("MISMATCH per folder (server vs stored + quarantined):")
        for name, m in sorted(check["per_folder_mismatches"].items()):
            print(f"  {name}: server {m['server']}, stored {m['stored']}, quarantined {m['quarantined']}")
    if check["quarantine_reasons"]:
        print("Quarantined, by reason:")
        for reason, count in sorted(check["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
            print(f"  {count:6d}  {reason}")
    if r["dovecot_log_problems"]:
        print(f"Dovecot log: {len(r['dovecot_log_problems'])} warning/error lines, e.g.:")
        for line in r["dovecot_log_problems"][:5]:
            print(f"  {line[:200]}")
    if r["git"]["dirty"]:
        print(f"Note: the working tree had uncommitted changes: {', '.join(r['git']['dirty'][:8])}")


def _where(filename: str) -> str:
    where = filename.replace(str(BASE_DIR) + "/", "")
    where = re.sub(r".*/site-packages/", "", where)
    return re.sub(r".*/lib/python3\.\d+/", "stdlib/", where)


def print_profile(path: Path, top: int = 25) -> None:
    """cProfile on each thread's CPU clock, every thread of the sync summed."""
    stats = pstats.Stats(str(path))
    total = stats.total_tt
    print(
        f"\ncProfile of the initial sync: {total:.1f} s of CPU in Python threads (waits excluded), top {top}:"
    )
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in rows:
        print(
            f"  {100 * tottime / total:5.1f}%  own {tottime:7.2f}s  cum {cumtime:7.2f}s  "
            f"{ncalls:>9}  {_where(filename)}:{line}({func})"
        )
    print("Application functions by cumulative time:")
    app = [
        item
        for item in stats.stats.items()
        if item[0][0].startswith(str(BASE_DIR)) and "/.venv/" not in item[0][0]
    ]
    for (filename, line, func), (_, ncalls, _, cumtime, _) in sorted(app, key=lambda kv: -kv[1][3])[:top]:
        where = f"{_where(filename)}:{line}({func})"
        print(f"  {100 * cumtime / total:5.1f}%  cum {cumtime:7.2f}s  {ncalls:>9}  {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages on the server (10000)")
    parser.add_argument("--folders", type=int, default=10, help="folders to spread them over (10)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and the database")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--tls", choices=["starttls", "none"], default="starttls", help="both clients")
    parser.add_argument("--fill", choices=["maildir", "append"], default="maildir", help="how to fill")
    parser.add_argument("--no-corpus", action="store_true", help="synthetic messages only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--message-size", type=int, default=10_000, help="synthetic message size, bytes (10000)"
    )
    parser.add_argument("--mbsync-runs", type=int, default=3, help="initial mbsync pulls, median (3)")
    parser.add_argument("--profile", type=Path, help="run the initial sync under cProfile, stats here")
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="experiment: the worker's sys.setswitchinterval() in seconds for the initial sync",
    )
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.folders < 1 or args.mbsync_runs < 1:
        parser.error("--messages, --folders and --mbsync-runs must be positive")
    if os.geteuid() != 0:
        parser.error("must run as root (Dovecot, and files owned by the mail uid)")
    if shutil.which("mbsync") is None:
        parser.error("mbsync (isync) is not installed")
    if args.profile:
        args.profile = args.profile.resolve()

    # SIGTERM (e.g. a CI timeout) unwinds through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = django_setup()
    work = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=args.workdir))
    state: dict = {}
    try:
        results = run(args, settings, work, state)
        print_table(results)
        if args.profile:
            print_profile(args.profile)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
            print(f"\nJSON written to {args.json}")
    finally:
        devmail = state.get("devmail")
        if devmail is not None:
            with contextlib.suppress(Exception):
                devmail.stop()
        if args.keep:
            log(f"kept {work} and the database {BENCH_DB}")
        else:
            if state.get("db_created"):
                try:
                    benchdb.database_drop(settings)
                except Exception as exc:
                    log(f"could not drop {BENCH_DB}: {exc}")
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
