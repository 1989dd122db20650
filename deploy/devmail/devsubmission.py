#!/usr/bin/env python3
"""A development SMTP submission server in front of a devmail Dovecot, for
``make run``: what the demo account sends arrives in the demo mailbox.

    .venv/bin/python deploy/devmail/devsubmission.py DIR [--port 10587] [--host 127.0.0.1]

DIR is a devmail instance (``devmail.py start DIR``). The server listens on
loopback (port DEVMAIL_SUBMISSION_PORT, default 10587) with:

* STARTTLS with the instance's certificate (``DIR/tls``, its CA is
  ``DIR/tls/ca.pem``), required before anything else;
* AUTH PLAIN/LOGIN, required, against the instance's users and passwords
  (``DIR/users``; a login of ``demo`` or ``demo@anything``);
* delivery: a recipient whose local part is a devmail user (any domain:
  ``demo@localhost``, ``demo@example.com``) gets the message in INBOX, stored
  by Dovecot itself (``doveadm save``: Dovecot writes the Maildir and its
  indexes, so IMAP clients see it at once); any other recipient is *caught*:
  the message is kept as ``DIR/caught/<time>-<id>.eml`` and never relayed.

Why not LMTP (or Dovecot's ``submission`` service, which only relays to
another MTA): Dovecot's LMTP server cannot chroot, so its mail processes
(as ``nobody``) must be able to walk the path to the instance directory,
and devmail instances live in root-only directories (pytest's
``/tmp/pytest-of-root``, a checkout under ``/root``); it would also need one
more Debian package. ``doveadm save`` runs in the same chroot as IMAP.

Needs aiosmtpd (requirements-dev.txt: run it with the project's venv).
Runs in the foreground until SIGINT/SIGTERM. Development only: one process,
no queue, no retries (a failed local delivery is a 451 to the client).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devmail import DevMail, DevMailError

DEFAULT_PORT = 10587


def log(message: str) -> None:
    print(f"devsubmission: {message}", file=sys.stderr, flush=True)


class Submission:
    """aiosmtpd handler: authenticate against devmail, deliver or catch."""

    def __init__(self, devmail: DevMail):
        self.devmail = devmail
        self.caught_dir = devmail.root / "caught"

    def local_user(self, address: str) -> str | None:
        """The devmail user an address names (its local part), if any."""
        local = address.rsplit("@", 1)[0] if "@" in address else address
        return local if self.devmail.password(local) is not None else None

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        user = self.local_user(login)
        password = self.devmail.password(user) if user else None
        ok = password is not None and password == auth_data.password.decode("utf-8", "replace")
        if not ok:
            log(f"login refused for {login!r}")
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        local = {r: self.local_user(r) for r in envelope.rcpt_tos}
        caught = [r for r, user in local.items() if user is None]
        users = sorted({user for user in local.values() if user is not None})
        loop = asyncio.get_running_loop()
        failed = []
        for user in users:
            try:
                await loop.run_in_executor(None, self.devmail.deliver, user, data)
            except (DevMailError, OSError) as exc:
                log(f"delivery to {user} failed: {exc}")
                failed.append(user)
            else:
                log(f"{envelope.mail_from} -> {user}: delivered to INBOX ({len(data)} bytes)")
        if caught:
            path = self.catch(data)
            log(f"{envelope.mail_from} -> {', '.join(caught)}: caught in {path}, not relayed")
        if failed:
            return f"451 4.3.0 local delivery to {', '.join(failed)} failed"
        return "250 2.0.0 Ok: delivered"

    def catch(self, data: bytes) -> Path:
        self.caught_dir.mkdir(exist_ok=True)
        path = self.caught_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.eml"
        path.write_bytes(data)
        return path


def controller(devmail: DevMail, host: str, port: int) -> Controller:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(devmail.cert_file), str(devmail.key_file))
    handler = Submission(devmail)
    return Controller(
        handler,
        hostname=host,
        port=port,
        server_hostname="localhost",
        tls_context=tls,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=handler.authenticate,
        enable_SMTPUTF8=True,
        data_size_limit=50 * 1024 * 1024,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devsubmission", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, metavar="DIR", help="the devmail instance directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("DEVMAIL_SUBMISSION_PORT") or DEFAULT_PORT)
    )
    args = parser.parse_args(argv)
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's per-command chatter
    devmail = DevMail.load(args.dir) if (args.dir / "instance.json").exists() else DevMail(args.dir)
    if not devmail.cert_file.exists():
        parser.error(f"no devmail instance in {args.dir} (start it first: devmail.py start DIR)")
    if not devmail.is_running():
        parser.error(f"the devmail instance in {args.dir} is not running")
    server = controller(devmail, args.host, args.port)
    server.start()
    log(f"listening on {args.host}:{args.port} (STARTTLS, AUTH as a devmail user; CA {devmail.ca_file})")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
