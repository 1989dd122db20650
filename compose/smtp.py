"""The SMTP client: one message to its recipients, each outcome classified.

Its own protocol layer: it knows nothing of HTTP, Celery or the outbox; the
outbox (`compose.outbox`) calls `message_deliver` with no transaction open.

Connection policy, the same as the IMAP side (`mailboxes.imap.connection`):

* the host name is resolved once and checked (`resolve`): loopback, private
  and metadata addresses are refused unless `MAIL_ALLOW_PRIVATE_HOSTS`, and
  the connection goes to that one address (no DNS rebinding);
* `tls` is implicit TLS (465); `starttls` REQUIRES STARTTLS (a server that
  does not offer it is refused, never used in clear); `none` only with
  `MAIL_ALLOW_PLAINTEXT`. The certificate and the host name the user gave
  are verified (`ssl_context`, with `MAIL_TLS_CA_FILE`);
* every read and write has a timeout; a reply line longer than 8 KiB (as
  smtplib's own bound) or a reply of more than 100 lines aborts the
  connection;
* besides the per-read timeout, total deadlines: the DNS lookup, connecting,
  TLS, the greeting, EHLO, STARTTLS and AUTH together within
  `config.connect_deadline` (`SMTP_CONNECTION_DEADLINE`); one message, MAIL
  FROM to the reply after its body, within `SMTP_MESSAGE_DEADLINE` plus one
  second per `SMTP_MESSAGE_MIN_RATE` bytes of it; RSET and QUIT within
  `_CLOSING_SECONDS`. Each read or write waits at most the time left, so a
  server that trickles a byte just under each read timeout cannot hold a
  send worker past them. A deadline is classified as any lost connection:
  before the body, a `TemporaryFailure`; once the body was handed over,
  `DeliveryUncertain`.

The outcome of a delivery is exactly one of:

* `DeliveryResult`: the server took the message (2xx after the body) for the
  accepted recipients; those refused one by one are in `refused`;
* `TemporaryFailure`: nothing was delivered and trying again later may work:
  a 4xx reply at any step up to and including the reply to the body, or the
  connection refused, reset, timed out or lost before the body was sent;
* `PermanentFailure`: nothing was delivered and trying again will not help:
  a 5xx reply, every recipient refused with 5xx, the account's settings
  (private address, no STARTTLS, certificate not trusted, login refused), or
  a message the server cannot take (SMTPUTF8 or 8BITMIME needed and not
  offered, over its SIZE);
* `DeliveryUncertain`: the body was sent, even in part, and no final reply
  came (the connection died or timed out): the server may have the message.
  Never retried automatically: a retry could deliver it twice.

`on_phase` is called with "connect" (before connecting), "envelope"
(connected, secured and logged in; before MAIL FROM) and "data" (the server
answered 354; before the first byte of the body). The outbox commits the
phase in that callback, so a worker that dies after "data" leaves a record
that the message may have gone.

EHLO names the client by the address literal of its own end of the
connection (`[192.0.2.1]`, RFC 5321 4.1.4), never the machine's host name.
Credentials and message bodies are never logged.
"""

import base64
import contextlib
import io
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from accounts.models import EmailAccount
from accounts.services import Credentials
from mailboxes.imap.connection import Deadline, ServerConfig, resolve, ssl_context
from mailboxes.imap.errors import AddressNotAllowed, DeadlineExceeded, MailServerError
from mailboxes.sync.config import allowed_ports

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from typing_extensions import Buffer

logger = logging.getLogger(__name__)

# smtplib's own bound on a reply line (`smtplib._MAXLINE`), and one on the
# number of lines in a reply (an EHLO answer has a dozen).
MAX_REPLY_LINE = 8192
MAX_REPLY_LINES = 100
# The body goes in pieces so that the write timeout is per piece: one
# `sendall` of 25 MB would have to finish within a single timeout.
_SEND_CHUNK = 64 * 1024
# What an envelope address may not contain: it goes into a command line.
_ADDRESS_FORBIDDEN = re.compile(r"[\x00-\x20<>\x7f]")
# RSET after a refused message and QUIT at the end, each in all: a healthy
# server answers in milliseconds, and nothing is lost by giving up on either.
_CLOSING_SECONDS = 10.0


# --- Results and errors ----------------------------------------------------------


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass
class DeliveryResult:
    accepted: dict[str, SmtpReply]
    refused: dict[str, SmtpReply] = field(default_factory=dict)
    reply: SmtpReply = field(default_factory=lambda: SmtpReply(0, ""))  # to the end of DATA


class SmtpError(Exception):
    """Base of the client's errors; `reply` is the server's, when there was
    one; `refused` the recipients' replies when every one was refused."""

    def __init__(self, message: str, reply: SmtpReply | None = None):
        super().__init__(message)
        self.reply = reply
        self.refused: dict[str, SmtpReply] = {}


class TemporaryFailure(SmtpError):
    """Not delivered; worth trying again later (4xx, connection lost before the body)."""


class PermanentFailure(SmtpError):
    """Not delivered; trying again will not help (5xx, the account's settings)."""


class InsecureServer(PermanentFailure):
    """The server cannot give the security the account asks for."""


class AuthenticationFailed(PermanentFailure):
    """The server refused the login."""


class DeliveryUncertain(SmtpError):
    """The body was sent and no final reply came: the server may have the message."""


# --- smtplib with a pinned address and bounded replies ------------------------------


class _ConnectionLost(smtplib.SMTPServerDisconnected):
    """The connection broke, timed out, or the server sent something absurd."""


class _DeadlinePassed(_ConnectionLost):
    """The connection's or the message's total deadline passed."""


class _DeadlineReader(io.RawIOBase):
    """The socket's reads for the reply buffer, each waiting at most the
    read timeout and never past the client's deadline."""

    def __init__(self, sock: socket.socket, client: "_Client") -> None:
        super().__init__()
        self._sock, self._client = sock, client

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int:
        self._client.arm(self._sock)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self._client.arm(self._sock)  # past the deadline: _DeadlinePassed, not a timeout
            raise


class _Client(smtplib.SMTP):
    """smtplib.SMTP connecting to one checked address, implicit TLS or not,
    with a read timeout and bounded replies."""

    def __init__(
        self, config: ServerConfig, address: str, context: ssl.SSLContext, deadline: Deadline | None
    ):
        self._config, self._address, self._context = config, address, context
        self._line_limit = min(config.max_line, MAX_REPLY_LINE)
        # The total deadline of what is under way (connecting, a message,
        # closing); None between messages, when nothing is read.
        self.deadline = deadline
        # A local_hostname keeps smtplib from asking DNS for our own name; the
        # real one (our address literal) is set once connected.
        super().__init__(local_hostname="localhost", timeout=config.connect_timeout)

    def arm(self, sock: socket.socket, timeout: float | None = None) -> None:
        """Set the socket's timeout for the next read, write or handshake:
        `timeout` (the read timeout by default), or less when the deadline
        is nearer; past it, raise `_DeadlinePassed` (the caller closes: this
        runs inside the reply buffer's read, which cannot be closed there)."""
        sock.settimeout(self._time_left(self._config.read_timeout if timeout is None else timeout))

    def _time_left(self, timeout: float) -> float:
        """`timeout`, or less when the deadline is nearer; `_DeadlinePassed` past it."""
        if self.deadline is not None:
            try:
                timeout = min(timeout, self.deadline.remaining())
            except DeadlineExceeded as exc:
                raise _DeadlinePassed(str(exc)) from None
        return timeout

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self._address, port), self._time_left(timeout))
        try:
            if self._config.encryption == "tls":
                self.arm(sock, timeout)  # the handshake, in all
                sock = self._context.wrap_socket(sock, server_hostname=host)
            sock.settimeout(self._config.read_timeout)
            self.local_hostname = _address_literal(sock.getsockname()[0])
        except BaseException:
            sock.close()
            raise
        return sock

    def _check_deadline(self) -> None:
        """`_DeadlinePassed` when the deadline has passed (a timeout cut short by it)."""
        if self.deadline is not None and self.deadline.at <= time.monotonic():
            raise _DeadlinePassed(self.deadline.message)

    def connected_socket(self) -> socket.socket:
        if self.sock is None:
            raise _ConnectionLost("not connected")
        return self.sock

    def send(self, s: "Buffer | str") -> None:  # smtplib's, with the deadline and a clear error
        sock = self.connected_socket()
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        try:
            self.arm(sock)
            sock.sendall(data)
        except _DeadlinePassed:
            self.close()
            raise
        except OSError as exc:
            self.close()
            self._check_deadline()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise _ConnectionLost(f"connection lost sending a command: {reason}") from exc

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None:
            # A new socket (after STARTTLS) gets a new buffer: nothing read in
            # clear is taken as part of the encrypted session.
            self.file = io.BufferedReader(_DeadlineReader(self.connected_socket(), self))
        lines: list[bytes] = []
        while True:
            try:
                line = self.file.readline(self._line_limit + 1)
            except _DeadlinePassed:
                self.close()
                raise
            except OSError as exc:
                self.close()
                reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
                raise _ConnectionLost(f"connection lost waiting for a reply: {reason}") from exc
            if not line:
                self.close()
                raise _ConnectionLost("the server closed the connection")
            if len(line) > self._line_limit:
                self.close()
                raise _ConnectionLost(f"reply line longer than {self._line_limit} bytes")
            if len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise _ConnectionLost(f"reply of more than {MAX_REPLY_LINES} lines")
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
                break
            if line[3:4] != b"-":
                break
        return code, b"\n".join(lines)

    def send_body(self, payload: bytes) -> None:
        """Send the dot-stuffed body (with its final `.`) in pieces."""
        view, sock = memoryview(payload), self.connected_socket()
        try:
            for start in range(0, len(view), _SEND_CHUNK):
                self.arm(sock)
                sock.sendall(view[start : start + _SEND_CHUNK])
        except _DeadlinePassed:
            self.close()
            raise
        except OSError as exc:
            self.close()
            self._check_deadline()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise _ConnectionLost(f"connection lost sending the message: {reason}") from exc


def _address_literal(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


def _reply(code: int, text: bytes) -> SmtpReply:
    return SmtpReply(code, text.decode("utf-8", "replace").replace("\n", " ")[:1000])


def _refusal(step: str, reply: SmtpReply) -> SmtpError:
    """The error for a negative reply: 4xx temporary, anything else permanent."""
    message = f"{step} refused: {reply}"
    if 400 <= reply.code < 500:
        return TemporaryFailure(message, reply)
    return PermanentFailure(message, reply)


# --- Connecting -------------------------------------------------------------------


def _connect(config: ServerConfig, credentials: Credentials | None) -> _Client:
    """A connected, secured and (with credentials) logged-in client."""
    if config.encryption not in ("tls", "starttls", "none"):
        raise PermanentFailure(f"unknown SMTP encryption {config.encryption!r}")
    if config.encryption == "none" and not config.allow_plaintext:
        raise InsecureServer(f"{config.host}: unencrypted connections are not allowed (MAIL_ALLOW_PLAINTEXT)")
    where = f"{config.host}:{config.port}"
    deadline = None
    if config.connect_deadline is not None:
        deadline = Deadline(
            config.connect_deadline,
            f"{where}: not connected and logged in within {config.connect_deadline:g} s "
            "(SMTP_CONNECTION_DEADLINE)",
        )
    try:
        address = resolve(
            config.host,
            config.port,
            allow_private=config.allow_private,
            allowed_ports=config.allowed_ports,
            timeout=config.connect_timeout,  # a DNS server that never answers holds no worker
            deadline=deadline,
        )
    except AddressNotAllowed as exc:
        raise PermanentFailure(str(exc)) from exc
    except MailServerError as exc:  # DNS failed or was too slow: may come back
        raise TemporaryFailure(str(exc)) from exc
    client = _Client(config, address, ssl_context(config), deadline)
    try:
        greeting = _reply(*client.connect(config.host, config.port))
        if greeting.code != 220:
            raise _refusal(f"{where}: the connection", greeting)
        _ehlo(client, where)
        if config.encryption == "starttls":
            if not client.has_extn("starttls"):
                raise InsecureServer(f"{where} does not offer STARTTLS")
            reply = _reply(*client.docmd("STARTTLS"))
            if reply.code != 220:
                raise _refusal(f"{where}: STARTTLS", reply)
            client.arm(client.connected_socket(), config.connect_timeout)  # the handshake, in all
            client.sock = client._context.wrap_socket(client.connected_socket(), server_hostname=config.host)
            # Anything the server sent before the handshake is dropped with
            # the old buffer; the capabilities are asked for again.
            client.file = None
            client.helo_resp = client.ehlo_resp = None
            client.esmtp_features, client.does_esmtp = {}, False
            _ehlo(client, where)
        if credentials is not None:
            _authenticate(client, credentials, where)
    except SmtpError:
        client.close()
        raise
    except ssl.SSLCertVerificationError as exc:
        client.close()
        raise InsecureServer(f"certificate of {config.host} not trusted: {exc.verify_message}") from exc
    except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timed out, TLS broken
        client.close()
        if deadline is not None and deadline.at <= time.monotonic():  # a timeout cut short by it
            raise TemporaryFailure(deadline.message) from exc
        raise TemporaryFailure(f"cannot connect to {where}: {exc}") from exc
    client.deadline = None  # connected: each message has its own
    return client


def _ehlo(client: _Client, where: str) -> None:
    reply = _reply(*client.ehlo())
    if 200 <= reply.code < 300:
        return
    if 400 <= reply.code < 500:
        raise _refusal(f"{where}: EHLO", reply)
    reply = _reply(*client.helo())  # an SMTP server without extensions
    if not 200 <= reply.code < 300:
        raise _refusal(f"{where}: HELO", reply)


def _authenticate(client: _Client, credentials: Credentials, where: str) -> None:
    """AUTH PLAIN, else LOGIN, once. Not smtplib.login: it encodes the
    credentials as ASCII only (RFC 4616 says UTF-8) and tries up to three
    mechanisms in turn, three failed logins a send that could lock the
    account out."""
    if not client.has_extn("auth"):
        raise AuthenticationFailed(f"{where} offers no AUTH: cannot log in")
    mechanisms = client.esmtp_features["auth"].upper().split()
    user, password = credentials.username.encode(), credentials.password.encode()

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    if "PLAIN" in mechanisms:
        reply = _reply(*client.docmd("AUTH", "PLAIN " + b64(b"\0" + user + b"\0" + password)))
    elif "LOGIN" in mechanisms:
        reply = _reply(*client.docmd("AUTH", "LOGIN"))
        for secret in (user, password):
            if reply.code != 334:
                break
            reply = _reply(*client.docmd(b64(secret)))
    else:
        raise AuthenticationFailed(f"{where} offers neither AUTH PLAIN nor LOGIN: {' '.join(mechanisms)}")
    if reply.code == 235:
        return
    if 400 <= reply.code < 500:  # 454: a temporary failure of the server
        raise TemporaryFailure(f"{where}: login failed for now: {reply}", reply)
    raise AuthenticationFailed(f"{where} refused the login: {reply}", reply)


def _quit(client: _Client, seconds: float = _CLOSING_SECONDS) -> None:
    client.deadline = Deadline(seconds, "no answer to QUIT in time")
    with contextlib.suppress(smtplib.SMTPException, OSError):  # the message is out; nothing to save
        client.quit()
    client.close()


def message_deadline_seconds(size: int) -> float:
    """Seconds one message of `size` bytes (as sent) may take, MAIL FROM to
    the reply after its body: `SMTP_MESSAGE_DEADLINE` for the commands and
    the replies, plus its transfer at `SMTP_MESSAGE_MIN_RATE` bytes a second."""
    return float(settings.SMTP_MESSAGE_DEADLINE) + size / float(settings.SMTP_MESSAGE_MIN_RATE)


# --- Delivering -------------------------------------------------------------------


def _payload(data: bytes) -> bytes:
    """The DATA body: line ends made CRLF (a bare CR or LF is never sent),
    leading dots doubled, the final `.` line added."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _mail_options(client: _Client, *, smtputf8: bool, eight_bit: bool, size: int, where: str) -> list[str]:
    options: list[str] = []
    if smtputf8:
        if not client.has_extn("smtputf8"):
            raise PermanentFailure(
                f"{where} does not offer SMTPUTF8, needed for the non-ASCII addresses of this message"
            )
        options.append("SMTPUTF8")
        client.command_encoding = "utf-8"
    if eight_bit:
        if not client.has_extn("8bitmime"):
            raise PermanentFailure(
                f"{where} does not offer 8BITMIME, needed for the 8-bit data of this message"
            )
        options.append("BODY=8BITMIME")
    if client.has_extn("size"):
        limit = client.esmtp_features["size"].strip()
        if limit.isdigit() and 0 < int(limit) < size:
            raise PermanentFailure(f"the message ({size} bytes) is over {where}'s limit of {limit} bytes")
        options.append(f"SIZE={size}")
    return options


def _check_address(address: str, *, sender: bool = False) -> None:
    if (not address and not sender) or _ADDRESS_FORBIDDEN.search(address):
        raise PermanentFailure(f"unusable envelope address {address!r}")


def message_deliver(
    *,
    config: ServerConfig,
    credentials: Credentials | None,
    envelope_from: str,
    recipients: list[str],
    data: bytes,
    smtputf8: bool = False,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> DeliveryResult:
    """Deliver `data` (the message, CRLF line ends) to `recipients` over a
    connection of its own. See the module docstring for the outcomes and
    phases, and `SmtpSession` for several messages over one connection."""
    with SmtpSession(config, credentials) as session:
        return session.deliver(
            envelope_from=envelope_from,
            recipients=recipients,
            data=data,
            smtputf8=smtputf8,
            on_phase=on_phase,
        )


class SmtpSession:
    """Several messages over one connection, as a mail client submits a
    queue: connected at the first `deliver`, kept after each message whose
    transaction ended cleanly (delivered, or refused with the connection
    intact: RSET), closed and made again after any other outcome. A kept
    connection the server has since closed (or answers 421) is made again
    once, before anything of the message was sent. QUIT on `close()`.

    `deliver` has `message_deliver`'s outcomes, message by message."""

    def __init__(self, config: ServerConfig, credentials: Credentials | None):
        self.config = config
        self.credentials = credentials
        self.where = f"{config.host}:{config.port}"
        self._client: _Client | None = None
        self.connections = 0  # made so far (for tests and benchmarks)

    def __enter__(self) -> "SmtpSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _quit(client)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def deliver(
        self,
        *,
        envelope_from: str,
        recipients: list[str],
        data: bytes,
        smtputf8: bool = False,
        on_phase: Callable[[str], None] = lambda phase: None,
    ) -> DeliveryResult:
        if not recipients:
            raise PermanentFailure("no recipients")
        _check_address(envelope_from, sender=True)
        for recipient in recipients:
            _check_address(recipient)
        smtputf8 = smtputf8 or not envelope_from.isascii() or not all(r.isascii() for r in recipients)
        payload = _payload(data)
        reused = self._client is not None
        try:
            return self._transaction(envelope_from, recipients, data, payload, smtputf8, on_phase)
        except _StaleConnection:
            if not reused:
                raise TemporaryFailure(f"{self.where}: the connection closed before the message") from None
            logger.info("smtp %s: the kept connection was closed by the server; connecting again", self.where)
            return self._transaction(envelope_from, recipients, data, payload, smtputf8, on_phase)

    def _transaction(
        self,
        envelope_from: str,
        recipients: list[str],
        data: bytes,
        payload: bytes,
        smtputf8: bool,
        on_phase: Callable[[str], None],
    ) -> DeliveryResult:
        where = self.where
        reused = self._client is not None
        if self._client is None:
            on_phase("connect")
            self._client = _connect(self.config, self.credentials)
            self.connections += 1
        client = self._client
        seconds = message_deadline_seconds(len(payload))
        client.deadline = Deadline(
            seconds,
            f"the message was not done within its deadline of {seconds:.1f} s "
            "(SMTP_MESSAGE_DEADLINE, SMTP_MESSAGE_MIN_RATE)",
        )
        body_started = False
        try:
            client.command_encoding = "ascii"
            options = _mail_options(
                client, smtputf8=smtputf8, eight_bit=not data.isascii(), size=len(payload), where=where
            )
            on_phase("envelope")
            try:
                reply = _reply(
                    *client.docmd("MAIL", f"FROM:<{envelope_from}>" + "".join(" " + o for o in options))
                )
            except _DeadlinePassed:
                raise  # a server that answers slowly, not a closed connection: no second try
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                if reused:
                    raise _StaleConnection() from exc
                raise
            if reused and reply.code == 421:
                raise _StaleConnection()
            if not 200 <= reply.code < 300:
                raise _refusal(f"{where}: MAIL FROM", reply)
            accepted: dict[str, SmtpReply] = {}
            refused: dict[str, SmtpReply] = {}
            for recipient in recipients:
                reply = _reply(*client.docmd("RCPT", f"TO:<{recipient}>"))
                (accepted if 200 <= reply.code < 300 else refused)[recipient] = reply
            if not accepted:
                temporary = [r for r in refused.values() if 400 <= r.code < 500]
                first = temporary[0] if temporary else next(iter(refused.values()))
                error = _refusal(f"{where}: every recipient ({len(refused)})", first)
                error.refused = refused
                raise error
            reply = _reply(*client.docmd("DATA"))
            if reply.code != 354:
                raise _refusal(f"{where}: DATA", reply)
            on_phase("data")
            body_started = True
            client.send_body(payload)
            reply = _reply(*client.getreply())
        except _StaleConnection:
            self._drop()
            raise
        except SmtpError as exc:
            # Refused before the body: the transaction is over, the
            # connection may carry the next message once reset.
            if exc.reply is None or exc.reply.code == 421 or not self._reset():
                self._drop()
            raise
        except smtplib.SMTPServerDisconnected as exc:  # includes timeouts and absurd replies
            self._drop()
            if body_started:
                logger.warning("smtp %s: no reply after the message was sent: %s", where, exc)
                raise DeliveryUncertain(
                    f"{where}: {exc} after the message was sent; it may have been delivered"
                ) from exc
            raise TemporaryFailure(f"{where}: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            if body_started:
                raise DeliveryUncertain(f"{where}: {exc} after the message was sent") from exc
            raise TemporaryFailure(f"{where}: {exc}") from exc
        except BaseException:
            self._drop()
            raise

        client.deadline = None
        if 200 <= reply.code < 300:
            logger.info("smtp %s: delivered to %d of %d recipients", where, len(accepted), len(recipients))
            return DeliveryResult(accepted=accepted, refused=refused, reply=reply)
        if 400 <= reply.code < 600:
            # The server answered the body: the transaction is over either way.
            if reply.code == 421:
                self._drop()
            raise _refusal(f"{where}: the message", reply)
        self._drop()
        raise DeliveryUncertain(f"{where}: unintelligible reply after the message was sent: {reply}", reply)

    def _reset(self) -> bool:
        """RSET after a refused transaction; whether the connection is usable."""
        if self._client is None:
            return False
        self._client.deadline = Deadline(_CLOSING_SECONDS, "no answer to RSET in time")
        try:
            return 200 <= _reply(*self._client.rset()).code < 300
        except (smtplib.SMTPException, OSError):
            return False
        finally:
            if self._client is not None:
                self._client.deadline = None


class _StaleConnection(Exception):
    """A kept connection turned out closed before anything of the message went."""


def smtp_check(config: ServerConfig, credentials: Credentials | None, *, ends: float | None = None) -> None:
    """Connect, secure, log in and quit: raises as `message_deliver` would,
    for checking an account's SMTP settings. `ends` (time.monotonic()): the
    QUIT waits for its answer until then at most."""
    client = _connect(config, credentials)
    left = _CLOSING_SECONDS if ends is None else max(0.1, min(_CLOSING_SECONDS, ends - time.monotonic()))
    _quit(client, left)


def smtp_config(account: EmailAccount) -> ServerConfig:
    """The SMTP server settings of an account."""
    if not account.smtp_hostname or not account.smtp_port:
        raise PermanentFailure("the account has no SMTP server")
    return ServerConfig(
        host=account.smtp_hostname,
        port=account.smtp_port,
        encryption=account.smtp_encryption or "starttls",
        allow_private=settings.MAIL_ALLOW_PRIVATE_HOSTS,
        allow_plaintext=settings.MAIL_ALLOW_PLAINTEXT,
        ca_file=settings.MAIL_TLS_CA_FILE,
        connect_timeout=settings.SMTP_CONNECT_TIMEOUT,
        read_timeout=settings.SMTP_TIMEOUT,
        connect_deadline=settings.SMTP_CONNECTION_DEADLINE,
        max_line=MAX_REPLY_LINE,
        allowed_ports=allowed_ports(),
    )
