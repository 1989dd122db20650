#!/usr/bin/env python3
"""Throwaway Dovecot (IMAP + POP3) instances for tests and ``make run``.

Standard library only; needs Debian's ``dovecot-imapd``, ``dovecot-pop3d``
and ``openssl`` (see ``install.sh``).  Must run as root (Dovecot's master
process needs it to drop privileges for its login and mail processes).

Everything an instance owns lives in one directory ``root``::

    root/dovecot.conf    generated config (dovecot -c, never /etc/dovecot)
    root/users/<user>    one passwd-file per user ({PLAIN} password)
    root/instance.json   ports/options of the last start (used by the CLI)
    root/tls/            private CA (ca.pem, ca.key) + server.pem/server.key
    root/run/            base_dir: sockets, master.pid
    root/state/          state_dir
    root/dovecot.log     log_path (errors, warnings and info)
    root/mail/<user>/Maildir   Maildir++ mailboxes (owned by nobody:nogroup)

Mail processes run as ``nobody:nogroup`` and are chrooted to ``root/mail``
(userdb home ``root/mail/./<user>``), so ``root`` may live under directories
that only root can traverse (for example pytest's ``/tmp/pytest-of-root``).

Several instances can run at once as long as their roots and ports differ.

Python use::

    from devmail import DevMail, free_port
    with DevMail(tmp_path / "mail", imap_port=free_port(), ...) as dm:
        dm.add_user("alice", "secret")
        ssl_ctx = ssl.create_default_context(cafile=dm.ca_file)
        ...
        dm.restart(condstore=False, qresync=False)

CLI: ``python3 devmail.py {start,stop,restart,status,adduser,deliver} DIR``
(see ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["DevMail", "DevMailError", "free_port"]

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"

# Folders created for every user on first access, with their RFC 6154 flag.
SPECIAL_USE = {
    "Sent": r"\Sent",
    "Drafts": r"\Drafts",
    "Trash": r"\Trash",
    "Junk": r"\Junk",
    "Archive": r"\Archive",
}

# Dovecot 2.3.19's post-login CAPABILITY (Debian 12), as observed, without
# CONDSTORE and QRESYNC.  Used as an explicit ``imap_capability`` when
# condstore/qresync are turned off; the explicit value replaces the
# capability list both before and after login.  Dovecot's login process still
# appends STARTTLS / AUTH=... / LOGINDISABLED before login by itself.
_BASE_CAPABILITY = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
    "THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND "
    "URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
    "I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
    "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE "
    "LITERAL+ NOTIFY SPECIAL-USE"
)


class DevMailError(RuntimeError):
    """Dovecot failed to start/stop, or a doveadm command failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now (small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (PID 1 may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class DevMail:
    """One Dovecot instance living in ``root``, listening on 127.0.0.1.

    Ports set to ``None`` (or 0) are not opened.  ``starttls=False`` means
    ``ssl = no``: no STARTTLS on the plain ports, and (a Dovecot 2.3
    limitation: ``ssl`` cannot be set per listener) no implicit-TLS ports
    either, so imaps_port/pop3s_port are ignored then.

    ``condstore=False`` (implies qresync=False) hides CONDSTORE and QRESYNC from CAPABILITY (before
    and after login); ``qresync=False`` hides only QRESYNC.  Dovecot still
    *accepts* ``ENABLE CONDSTORE/QRESYNC`` and ``SELECT x (CONDSTORE)`` from a
    client that sends them anyway: there is no setting to refuse them.

    Options are plain attributes; change them and call ``restart()`` (or pass
    them to ``restart(**options)``).
    """

    def __init__(
        self,
        root: Path | str,
        imap_port: int | None = 10143,
        pop3_port: int | None = 10110,
        imaps_port: int | None = 10993,
        pop3s_port: int | None = 10995,
        *,
        condstore: bool = True,
        qresync: bool = True,
        starttls: bool = True,
        host: str = "127.0.0.1",
        separator: str = ".",
    ) -> None:
        self.root = Path(root).absolute()
        if any(c.isspace() or c in '"%' for c in str(self.root)):
            raise ValueError(f"root must not contain whitespace, quotes or '%': {self.root}")
        self.imap_port = imap_port or None
        self.pop3_port = pop3_port or None
        self.imaps_port = imaps_port or None
        self.pop3s_port = pop3s_port or None
        self.condstore = condstore
        self.qresync = qresync
        self.starttls = starttls
        self.host = host
        self.separator = separator  # IMAP hierarchy separator ("." or "/")
        self.config_file = self.root / "dovecot.conf"
        self.users_dir = self.root / "users"  # passwd-file per user: users/<name>
        self.log_file = self.root / "dovecot.log"
        self.base_dir = self.root / "run"
        self.state_dir = self.root / "state"
        self.mail_dir = self.root / "mail"
        self.tls_dir = self.root / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.cert_file = self.tls_dir / "server.pem"
        self.key_file = self.tls_dir / "server.key"
        self.startup_seconds: float | None = None  # time the last start() took

    # ------------------------------------------------------------------ info
    def __repr__(self) -> str:
        return (
            f"DevMail({str(self.root)!r}, imap={self.imap_port}, pop3={self.pop3_port}, "
            f"imaps={self.imaps_port}, pop3s={self.pop3s_port}, condstore={self.condstore}, "
            f"qresync={self.qresync}, starttls={self.starttls})"
        )

    @property
    def pid(self) -> int | None:
        """PID of the running Dovecot master process, else None."""
        try:
            pid = int((self.base_dir / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        """True if this instance's Dovecot master process is alive."""
        return self.pid is not None

    def options(self) -> dict:
        """The constructor arguments, as saved in ``root/instance.json``."""
        return {
            "imap_port": self.imap_port,
            "pop3_port": self.pop3_port,
            "imaps_port": self.imaps_port,
            "pop3s_port": self.pop3s_port,
            "condstore": self.condstore,
            "qresync": self.qresync,
            "starttls": self.starttls,
            "host": self.host,
            "separator": self.separator,
        }

    @classmethod
    def load(cls, root: Path | str) -> DevMail:
        """A DevMail for ``root`` with the options of its last ``start()``."""
        root = Path(root)
        opts = json.loads((root / "instance.json").read_text())
        return cls(root, **opts)

    def imap_capability(self) -> str:
        """The explicit ``imap_capability`` setting, or "" for Dovecot's default."""
        if self.condstore and self.qresync:
            return ""
        caps = _BASE_CAPABILITY.split()
        if self.condstore:  # CONDSTORE on, QRESYNC off
            caps.insert(caps.index("ESEARCH"), "CONDSTORE")
        return " ".join(caps)

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> DevMail:
        """Write config, make TLS files once, start Dovecot, wait for the ports.

        If this root's instance is already running it is stopped first, so
        ``start()`` also applies changed options.
        """
        if not self.condstore:
            self.qresync = False  # QRESYNC implies CONDSTORE (RFC 7162)
        t0 = time.monotonic()
        if self.is_running():
            self.stop()
        self._prepare_dirs()
        self._ensure_tls()
        self.write_config()
        (self.root / "instance.json").write_text(json.dumps(self.options(), indent=2) + "\n")
        # Not capture_output: the daemonized master inherits stdout/stderr,
        # so reading pipes to EOF would block for as long as it runs.
        with tempfile.TemporaryFile(dir=self.root) as out:
            proc = subprocess.run(
                [DOVECOT, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            out.seek(0)
            output = out.read().decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            raise DevMailError(
                f"dovecot failed to start (exit {proc.returncode}): {output}\n{self._log_tail()}"
            )
        try:
            self._wait_ready(t0 + timeout)
        except Exception:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Dovecot (SIGTERM to the master) and wait until it and its ports are gone."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
                break
            time.sleep(0.05)
        # Children exit with the master; make sure the ports are released.
        while any(self._port_open(p) for p in self.ports()) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, **options) -> DevMail:
        """Stop, apply ``options`` (e.g. condstore=False, qresync=False), start."""
        for key, value in options.items():
            if key not in self.options():
                raise TypeError(f"unknown DevMail option {key!r}")
            if key.endswith("_port"):
                value = value or None
            setattr(self, key, value)
        self.stop()
        return self.start()

    def __enter__(self) -> DevMail:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def ports(self) -> list[int]:
        """The TCP ports this instance listens on with the current options."""
        ports = [self.imap_port, self.pop3_port]
        if self.starttls:
            ports += [self.imaps_port, self.pop3s_port]
        return [p for p in ports if p]

    # ---------------------------------------------------------------- users
    def add_user(self, name: str, password: str) -> None:
        """Add (or re-password) a passwd-file user; works while running.

        The user's Maildir is ``root/mail/<name>/Maildir``; Sent, Drafts,
        Trash, Junk and Archive are created (and subscribed) at first login.
        A new user can log in as soon as this returns.  Changing an existing
        user's password while running waits for the next wall-clock second
        (Dovecot re-checks a passwd file at most once a second).
        """
        if not name or any(c in name for c in ":/\n\r\t %") or name.startswith("."):
            raise ValueError(f"unusable user name {name!r}")
        if any(c in password for c in ":\n\r"):
            raise ValueError("password must not contain ':' or newlines")
        self._prepare_dirs()
        home = self.mail_dir / name
        home.mkdir(exist_ok=True)
        uid, gid = _mail_ids()
        os.chown(home, uid, gid)
        home.chmod(0o700)
        line = f"{name}:{{PLAIN}}{password}:{uid}:{gid}::{self.mail_dir}/./{name}::\n"
        path = self.users_dir / name
        existed = path.exists()
        # Atomic replace; bump mtime past the old one so Dovecot (which
        # compares mtime + size) notices a same-size change in the same second.
        old_mtime = path.stat().st_mtime if existed else 0
        fd, tmp = tempfile.mkstemp(dir=self.users_dir, prefix=".tmp.")
        with os.fdopen(fd, "w") as f:
            f.write(line)
        mtime = max(time.time(), old_mtime + 1)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
        if existed and self.is_running():
            time.sleep(1.05 - time.time() % 1)

    def password(self, name: str) -> str | None:
        """A user's password (stored as ``{PLAIN}``), or None for no such user."""
        if not name or any(c in name for c in ":/\n\r\t %") or name.startswith("."):
            return None
        try:
            line = (self.users_dir / name).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        secret = line.split(":", 2)[1]
        return secret[len("{PLAIN}") :] if secret.startswith("{PLAIN}") else secret

    def users(self) -> list[str]:
        """Names of this instance's users."""
        if not self.users_dir.is_dir():
            return []
        return sorted(p.name for p in self.users_dir.iterdir() if not p.name.startswith("."))

    def maildir(self, user: str) -> Path:
        """Path of a user's Maildir (INBOX) on disk."""
        return self.mail_dir / user / "Maildir"

    # ------------------------------------------------------------- mailboxes
    def doveadm(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        """Run ``doveadm -c <our config> ARGS...`` and return its stdout.

        Most mail commands (``-u USER``) need the instance to be running
        (user lookups go through its auth socket).
        """
        proc = subprocess.run(
            [DOVEADM, "-c", str(self.config_file), *args],
            input=input,
            capture_output=True,
        )
        out = proc.stdout.decode("utf-8", "replace")
        if check and proc.returncode != 0:
            raise DevMailError(
                f"doveadm {' '.join(args)} failed (exit {proc.returncode}): "
                f"{proc.stderr.decode('utf-8', 'replace').strip()}"
            )
        return out

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> None:
        """Store a raw RFC 5322 message into ``folder`` (doveadm save; running)."""
        self.doveadm("save", "-u", user, "-m", folder, input=message)

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """Current UIDVALIDITY of ``folder`` (doveadm mailbox status; running)."""
        out = self.doveadm("-f", "flow", "mailbox", "status", "-u", user, "uidvalidity", folder)
        return int(out.strip().split("=", 1)[1])

    def reset_uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """Give ``folder`` a new, larger UIDVALIDITY and return it.

        Running: ``doveadm mailbox update --uid-validity N`` (official and
        atomic; messages keep their UIDs, IMAP sessions that have the folder
        selected are disconnected by Dovecot).  Stopped: deletes the
        folder's ``dovecot-uidlist`` and ``dovecot.index*`` files, so the next
        access renumbers the messages from UID 1 under a new UIDVALIDITY.
        """
        if self.is_running():
            old = self.uidvalidity(user, folder)
            new = max(int(time.time()), old + 1) & 0xFFFFFFFF or 1
            self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(new), folder)
            return new
        path = self._folder_path(user, folder)
        if not path.is_dir():
            raise DevMailError(f"no folder {folder!r} for user {user!r} at {path}")
        for f in path.iterdir():
            if f.name == "dovecot-uidlist" or f.name.startswith("dovecot.index"):
                f.unlink()
        return 0  # assigned at next access; read it with uidvalidity() once running

    # ------------------------------------------------------------- internals
    def _folder_path(self, user: str, folder: str) -> Path:
        md = self.maildir(user)
        if folder.upper() == "INBOX":
            return md
        return md / ("." + folder.replace(self.separator, "."))

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.base_dir, self.state_dir, self.tls_dir, self.users_dir):
            d.mkdir(exist_ok=True)
        self.tls_dir.chmod(0o700)
        self.users_dir.chmod(0o700)
        self.mail_dir.mkdir(exist_ok=True)
        self.mail_dir.chmod(0o755)  # chroot of the mail processes
        tmp = self.mail_dir / "tmp"  # mail_temp_dir inside the chroot
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o1777)

    def _ensure_tls(self) -> None:
        """Private CA + server cert for localhost/127.0.0.1/::1, made once per root."""
        if self.ca_file.exists() and self.cert_file.exists() and self.key_file.exists():
            return
        d = self.tls_dir
        ext = d / "server.ext"
        ext.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        cmds = [
            [OPENSSL, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem.tmp",
             "-days", "3650", "-subj", "/CN=devmail test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash"],
            [OPENSSL, "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost"],
            [OPENSSL, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem.tmp",
             "-CAkey", "ca.key", "-set_serial", str(int(time.time() * 1000)),
             "-days", "3650", "-sha256", "-extfile", "server.ext", "-out", "server.pem"],
        ]  # fmt: skip
        for cmd in cmds:
            proc = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
            if proc.returncode != 0:
                raise DevMailError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        for name in ("ca.key", "server.key"):
            (d / name).chmod(0o600)
        (d / "server.csr").unlink()
        os.replace(d / "ca.pem.tmp", self.ca_file)  # last: marks completion

    def write_config(self) -> Path:
        """Write ``root/dovecot.conf`` for the current options and return its path."""
        mailboxes = "".join(
            f"  mailbox {name} {{\n    special_use = {flag}\n    auto = subscribe\n  }}\n"
            for name, flag in SPECIAL_USE.items()
        )
        tls_listeners = self.starttls
        cap = self.imap_capability()
        dh = Path("/usr/share/dovecot/dh.pem")
        conf = f"""\
# Generated by deploy/devmail/devmail.py - edits are overwritten on start().
instance_name = devmail-{self.root.name}-{self.imap_port or 0}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_file}
info_log_path = {self.log_file}
protocols = imap pop3
listen = {self.host}
shutdown_clients = yes

default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
first_valid_gid = 1

ssl = {"yes" if self.starttls else "no"}
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
ssl_min_protocol = TLSv1.2
{f"ssl_dh = <{dh}" if dh.exists() else ""}

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes

# One file per user: a new file is seen at once (a missing one is not
# cached), while a single shared file is re-read at most once a second.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.users_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.users_dir}/%u
}}

# Mail processes chroot to {self.mail_dir} (home = mail/./<user>).
valid_chroot_dirs = {self.mail_dir}
mail_location = maildir:~/Maildir
mail_temp_dir = /tmp
mail_fsync = never
mailbox_idle_check_interval = 1 secs
mail_max_userip_connections = 200

namespace inbox {{
  inbox = yes
  separator = {self.separator}
{mailboxes}}}

protocol imap {{
  mail_max_userip_connections = 200
{f"  imap_capability = {cap}" if cap else ""}
}}
protocol pop3 {{
  pop3_uidl_format = %08Xu%08Xv
}}

service imap-login {{
  inet_listener imap {{
    port = {self.imap_port or 0}
  }}
  inet_listener imaps {{
    port = {(self.imaps_port or 0) if tls_listeners else 0}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port or 0}
  }}
  inet_listener pop3s {{
    port = {(self.pop3s_port or 0) if tls_listeners else 0}
    ssl = yes
  }}
}}
# Reads root/users/*, which may sit below root-only (0700) directories.
service auth {{
  user = root
}}
# No LMTP/submission/doveadm TCP listeners.
service lmtp {{
  unix_listener lmtp {{
    mode = 0
  }}
}}
"""
        self.config_file.write_text(conf)
        return self.config_file

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _wait_ready(self, deadline: float) -> None:
        """Wait until every port answers (a greeting on plain, a handshake on TLS)."""
        pending = {p: kind for p, kind in self._port_kinds()}
        last_err: Exception | None = None
        while pending:
            for port, kind in list(pending.items()):
                try:
                    self._probe(port, kind)
                    del pending[port]
                except OSError as e:
                    last_err = e
            if not pending:
                break
            if time.monotonic() > deadline:
                raise DevMailError(
                    f"dovecot ports {sorted(pending)} not ready: {last_err}\n{self._log_tail()}"
                )
            if not self.is_running():
                raise DevMailError(f"dovecot exited during startup\n{self._log_tail()}")
            time.sleep(0.05)

    def _port_kinds(self):
        if self.imap_port:
            yield self.imap_port, "imap"
        if self.pop3_port:
            yield self.pop3_port, "pop3"
        if self.starttls and self.imaps_port:
            yield self.imaps_port, "imaps"
        if self.starttls and self.pop3s_port:
            yield self.pop3s_port, "pop3s"

    def _probe(self, port: int, kind: str) -> None:
        with socket.create_connection((self.host, port), timeout=2) as sock:
            if kind in ("imaps", "pop3s"):
                ctx = ssl.create_default_context(cafile=str(self.ca_file))
                ctx.check_hostname = False
                with ctx.wrap_socket(sock) as tls:
                    greeting = tls.recv(512)
            else:
                greeting = sock.recv(512)
        if not (greeting.startswith(b"* OK") or greeting.startswith(b"+OK")):
            raise OSError(f"unexpected greeting on port {port}: {greeting[:80]!r}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return "(no dovecot log)"
        return "dovecot.log tail:\n" + "\n".join(tail)


def _mail_ids() -> tuple[int, int]:
    import grp
    import pwd

    return pwd.getpwnam(MAIL_USER).pw_uid, grp.getgrnam(MAIL_GROUP).gr_gid


# ------------------------------------------------------------------- CLI
def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="devmail",
        description="Throwaway Dovecot IMAP/POP3 instance in DIR on 127.0.0.1. Ports come "
        "from DEVMAIL_IMAP_PORT (10143), DEVMAIL_POP3_PORT (10110), DEVMAIL_IMAPS_PORT "
        "(10993) and DEVMAIL_POP3S_PORT (10995) on start; later commands reuse them.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("dir", type=Path, metavar="DIR", help="instance directory")
        return p

    for name in ("start", "restart"):
        p = command(name, "(re)start the instance in DIR" + (" (alias of start)" * (name == "restart")))
        p.add_argument("--no-condstore", action="store_true", help="hide CONDSTORE+QRESYNC")
        p.add_argument("--no-qresync", action="store_true", help="hide QRESYNC")
        p.add_argument("--no-starttls", action="store_true", help="ssl=no (no TLS at all)")
    command("stop", "stop the instance in DIR")
    command("status", "print whether it runs (exit 3 if not), options, users")
    p = command("adduser", "add a user, or change its password")
    p.add_argument("name")
    p.add_argument("password")
    p = command("deliver", "store a message read from stdin into a user's folder")
    p.add_argument("name")
    p.add_argument("folder", nargs="?", default="INBOX")
    args = parser.parse_args(argv)

    saved = args.dir / "instance.json"
    if args.cmd in ("start", "restart"):
        dm = DevMail(
            args.dir,
            imap_port=_env_port("DEVMAIL_IMAP_PORT", 10143),
            pop3_port=_env_port("DEVMAIL_POP3_PORT", 10110),
            imaps_port=_env_port("DEVMAIL_IMAPS_PORT", 10993),
            pop3s_port=_env_port("DEVMAIL_POP3S_PORT", 10995),
            condstore=not args.no_condstore,
            qresync=not (args.no_qresync or args.no_condstore),
            starttls=not args.no_starttls,
        )
        dm.start()
        print(
            f"devmail: running pid {dm.pid} in {dm.root} "
            f"(imap {dm.imap_port}, pop3 {dm.pop3_port}, imaps {dm.imaps_port}, "
            f"pop3s {dm.pop3s_port}; CA {dm.ca_file}; started in {dm.startup_seconds:.2f}s)"
        )
        return 0
    dm = DevMail.load(args.dir) if saved.exists() else DevMail(args.dir)
    if args.cmd == "stop":
        was = dm.pid
        dm.stop()
        print(f"devmail: stopped pid {was}" if was else "devmail: not running")
    elif args.cmd == "status":
        pid = dm.pid
        print(f"devmail: {'running, pid ' + str(pid) if pid else 'stopped'}; root {dm.root}")
        print(f"  options: {json.dumps(dm.options())}")
        print(f"  users: {' '.join(dm.users()) or '(none)'}")
        print(f"  ca_file: {dm.ca_file}")
        return 0 if pid else 3
    elif args.cmd == "adduser":
        dm.add_user(args.name, args.password)
        print(f"devmail: user {args.name} ready (Maildir {dm.maildir(args.name)})")
    elif args.cmd == "deliver":
        dm.deliver(args.name, sys.stdin.buffer.read(), args.folder)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DevMailError, ValueError, OSError) as e:
        print(f"devmail: error: {e}", file=sys.stderr)
        sys.exit(1)
