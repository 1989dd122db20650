"""A real SMTP server for tests: aiosmtpd in a thread, recording every
message it accepts, with faults scripted per test.

One `SmtpSink` listens on three loopback ports, one handler behind all:

    sink.port("plain")     no TLS; AUTH offered in clear (for MAIL_ALLOW_PLAINTEXT tests)
    sink.port("starttls")  STARTTLS offered; AUTH only after it
    sink.port("tls")       implicit TLS (as port 465)

TLS uses the certificate given (the devmail one in `compose/tests/conftest.py`:
localhost, 127.0.0.1, ::1, signed by the devmail CA). AUTH PLAIN and LOGIN
check `sink.users` ({login: password}); `sink.require_auth = True` refuses
MAIL FROM (530) from a session that has not logged in.

What it got: `sink.deliveries`, one `Delivery` per message the server has
*received whole* (counted before its final reply, so a connection dropped
or hung after the body still counts: the server has the message).

Faults, each for the next `times` transactions (None: until reset):

    sink.fault("MAIL", 451)               reply 451 to MAIL FROM
    sink.fault("RCPT", 550, recipient=a)  refuse one recipient (or every one)
    sink.fault("DATA", 452)               reply 452 to the DATA command (no body sent)
    sink.fault("DATA_END", 554)           reply 554 after the body (not counted)
    sink.drop("DATA")                     close the connection at the DATA command
    sink.drop("DATA_END")                 close it after the whole body, no reply
    sink.hang(seconds)                    sleep after the whole body, then 250
    sink.hide("STARTTLS")                 leave an extension out of EHLO
                                          (also "SMTPUTF8", "8BITMIME", "AUTH"),
                                          or one AUTH mechanism ("AUTH=PLAIN")

`sink.reset()` clears deliveries, faults, hidden extensions and extra users.

`Trickler(stage)`: a tarpit of its own (a bare socket server) that sends one
reply a byte at a time, for the deadline tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

STAGES = ("MAIL", "RCPT", "DATA", "DATA_END")
MODES = ("plain", "starttls", "tls")


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # as received, dots un-stuffed, CRLF line ends
    mail_command: str  # the MAIL FROM arguments as sent: "FROM:<a@b> BODY=8BITMIME SIZE=12"
    smtputf8: bool
    login: str | None  # who logged in, if anyone
    tls: bool
    mode: str


@dataclass
class Fault:
    stage: str
    code: int | None = None  # None: drop the connection
    text: str = ""
    times: int | None = 1
    recipient: str | None = None  # RCPT only: this address (any case) alone
    hang: float = 0.0  # DATA_END only: sleep this long, then the normal reply
    _last_envelope: Envelope | None = field(default=None, repr=False)


class _Server(SMTP):
    """aiosmtpd's SMTP with a fault hook on the DATA command and the MAIL
    FROM arguments kept for the record."""

    def __init__(self, handler: SmtpSink, mode: str, **kwargs):
        super().__init__(handler, **kwargs)
        self.sink, self.mode = handler, mode

    async def smtp_MAIL(self, arg: str) -> None:
        if self.session is not None:
            self.session.mail_command = arg  # type: ignore[attr-defined]
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self.envelope is not None and self.envelope.rcpt_tos:
            fault = self.sink._fault("DATA", self.envelope)
            if fault is not None:
                if fault.code is None:
                    self.transport.abort()
                    return
                await self.push(f"{fault.code} {fault.text or 'Fault injected at DATA'}")
                return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    """A Controller on a socket bound at once to a free port (no race
    between choosing a port and listening on it)."""

    def __init__(self, sink: SmtpSink, mode: str, **kwargs):
        self.mode = mode
        super().__init__(sink, **kwargs)
        self._socket = socket.create_server((self.hostname, 0))
        self.port = self._socket.getsockname()[1]

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._socket, ssl=self.ssl_context)

    def factory(self) -> SMTP:
        return _Server(self.handler, self.mode, **self.SMTP_kwargs)


class SmtpSink:
    """The handler (aiosmtpd hooks) and the three listeners. See the module
    docstring."""

    def __init__(self, cert_file: Path | str, key_file: Path | str, host: str = "127.0.0.1"):
        self.host = host
        self._lock = threading.Lock()
        self.default_users: dict[str, str] = {}
        self.reset()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(cert_file), str(key_file))
        common = {
            "hostname": host,
            "server_hostname": "sink.test",
            "authenticator": self._authenticate,
            "enable_SMTPUTF8": True,
            "data_size_limit": 64 * 1024 * 1024,
            "timeout": 60,
        }
        self._controllers = {
            "plain": _Controller(self, "plain", auth_require_tls=False, **common),
            "starttls": _Controller(self, "starttls", tls_context=tls, **common),
            # Implicit TLS: aiosmtpd does not count it as TLS for
            # auth_require_tls, but the connection is encrypted all along.
            "tls": _Controller(self, "tls", ssl_context=tls, auth_require_tls=False, **common),
        }

    # --- Lifecycle ------------------------------------------------------------------

    def start(self) -> SmtpSink:
        for controller in self._controllers.values():
            controller.start()
        return self

    def stop(self) -> None:
        for controller in self._controllers.values():
            controller.stop()

    def port(self, mode: str = "starttls") -> int:
        return self._controllers[mode].port

    def reset(self) -> None:
        with self._lock:
            self.deliveries: list[Delivery] = []
            self.faults: list[Fault] = []
            self.hidden: set[str] = set()
            self.users = dict(self.default_users)
            self.require_auth = False
            self.logins: list[tuple[str, bool]] = []  # (login, accepted) per AUTH attempt

    # --- Scripting faults -------------------------------------------------------------

    def fault(
        self, stage: str, code: int, text: str = "", *, times: int | None = 1, recipient: str | None = None
    ) -> Fault:
        assert stage in STAGES, stage
        fault = Fault(stage, code, text, times, recipient)
        with self._lock:
            self.faults.append(fault)
        return fault

    def refuse(self, recipient: str, code: int = 550, text: str = "No such user") -> Fault:
        return self.fault("RCPT", code, text, times=None, recipient=recipient)

    def drop(self, stage: str, *, times: int | None = 1) -> Fault:
        assert stage in ("DATA", "DATA_END"), stage
        fault = Fault(stage, None, times=times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def hang(self, seconds: float, *, times: int | None = 1) -> Fault:
        fault = Fault("DATA_END", 250, "OK after a while", times=times, hang=seconds)
        with self._lock:
            self.faults.append(fault)
        return fault

    def hide(self, *extensions: str) -> None:
        with self._lock:
            self.hidden.update(e.upper() for e in extensions)

    def _fault(self, stage: str, envelope: Envelope, recipient: str | None = None) -> Fault | None:
        """The fault that applies now, if any; each counts once per transaction."""
        with self._lock:
            for fault in self.faults:
                if fault.stage != stage:
                    continue
                if fault.times == 0 and fault._last_envelope is not envelope:
                    continue  # used up (in an earlier transaction)
                if fault.recipient is not None and (recipient or "").lower() != fault.recipient.lower():
                    continue
                if fault.times is not None and fault._last_envelope is not envelope:
                    fault.times -= 1
                fault._last_envelope = envelope
                return fault
        return None

    # --- aiosmtpd hooks -----------------------------------------------------------------

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        hidden = self.hidden
        kept = []
        for line in responses:
            words = line[4:].split(" ")
            if words[0].upper() in hidden:
                continue
            if words[0].upper() == "AUTH":  # "AUTH=PLAIN" hides one mechanism
                words = [w for w in words if f"AUTH={w.upper()}" not in hidden]
            kept.append(line[:4] + " ".join(words))
        return kept

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        fault = self._fault("MAIL", envelope)
        if fault is not None:
            return f"{fault.code} {fault.text or 'Fault injected at MAIL'}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._fault("RCPT", envelope, address)
        if fault is not None:
            return f"{fault.code} {fault.text or 'Fault injected at RCPT'}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        fault = self._fault("DATA_END", envelope)
        if fault is not None and fault.code is not None and not fault.hang:
            return f"{fault.code} {fault.text or 'Fault injected after DATA'}"
        auth = session.auth_data
        delivery = Delivery(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            mail_command=getattr(session, "mail_command", ""),
            smtputf8=envelope.smtp_utf8,
            login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            tls=session.ssl is not None or server.mode == "tls",
            mode=server.mode,
        )
        with self._lock:
            self.deliveries.append(delivery)
        if fault is not None and fault.code is None:
            server.transport.abort()
            await asyncio.sleep(3600)  # cancelled when the connection is gone
        if fault is not None and fault.hang:
            await asyncio.sleep(fault.hang)
        return "250 2.0.0 Ok: queued"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        ok = self.users.get(login) == auth_data.password.decode("utf-8", "replace")
        with self._lock:
            self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


def ca_make(directory: Path, name: str = "other test CA") -> Path:
    """A CA certificate of its own (for 'a certificate from the wrong CA')."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class Trickler:
    """An SMTP tarpit for the deadline tests: it accepts, then sends one
    reply a byte every `interval` seconds (just under the client's read
    timeout, so no single read times out), an endless line that never ends.

    `stage`: which reply trickles: "greeting"; "EHLO" (greets at once);
    "DATA_END" (a plain server, no AUTH, answering MAIL, RCPT and DATA at
    once, taking the body, then trickling the final reply; `bodies` counts
    the bodies it took whole); or "BODY", the body itself is read slowly,
    16 KiB every `interval`, into small socket buffers. A connection is dropped after `give_up_after`
    seconds, so that a client without a deadline fails (slowly) instead of
    hanging the test run."""

    def __init__(self, stage: str, *, interval: float = 0.3, give_up_after: float = 10.0):
        assert stage in ("greeting", "EHLO", "DATA_END", "BODY"), stage
        self.stage, self.interval, self.give_up_after = stage, interval, give_up_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # "BODY": fills soon
        self.port = self.listener.getsockname()[1]
        self.bodies = 0
        self.trickled = 0  # bytes of the slow reply sent
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Trickler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket, until: float) -> None:
        code = b"220" if self.stage == "greeting" else b"250"
        for byte in code + b" " + b"x" * 100_000:
            if time.monotonic() > until or self.closed.is_set():
                return
            conn.sendall(bytes([byte]))
            self.trickled += 1
            time.sleep(self.interval)

    def _serve(self, conn: socket.socket) -> None:
        until = time.monotonic() + self.give_up_after
        try:
            if self.stage == "greeting":
                self._trickle(conn, until)
                return
            conn.sendall(b"220 trickler ready\r\n")
            file = conn.makefile("rb")
            while line := file.readline():
                command = line[:4].upper()
                if command in (b"EHLO", b"HELO"):
                    if self.stage == "EHLO":
                        self._trickle(conn, until)
                        return
                    conn.sendall(b"250-trickler\r\n250 8BITMIME\r\n")
                elif command == b"DATA" and self.stage == "BODY":
                    conn.sendall(b"354 go on\r\n")
                    while time.monotonic() < until and not self.closed.is_set() and conn.recv(16384):
                        time.sleep(self.interval)
                    return
                elif command == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    while (body := file.readline()) and body != b".\r\n":
                        pass
                    self.bodies += 1
                    self._trickle(conn, until)
                    return
                elif command == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()
