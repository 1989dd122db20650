"""The POP3 session: one logged-in connection and the few commands the sync
needs (the package's docstring tells the security rules)."""

import base64
import contextlib
import hashlib
import io
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from mailboxes.imap.connection import Deadline, ServerConfig, _DeadlineSocketIO, resolve, ssl_context
from mailboxes.imap.errors import AuthenticationFailed, InsecureServer, MailServerError, ProtocolViolation

T = TypeVar("T")

# The APOP timestamp in a greeting (RFC 1939 section 7: a msg-id).
_TIMESTAMP = re.compile(rb"<[\x21-\x3d\x3f-\x7e]*>")
# The most messages a LIST or UIDL answer may name (a mailbox of more is refused,
# not read into memory without end): far beyond any real POP3 mailbox.
MAX_LISTED = 1_000_000
# Commands sent ahead of their answers when the server says PIPELINING.
PIPELINE_WINDOW = 64
# RFC 3206: a refusal with these codes is the server's state, not the credentials.
_TEMPORARY = (b"[IN-USE]", b"[SYS/TEMP]", b"[LOGIN-DELAY]")


class Pop3Error(MailServerError):
    """The server answered -ERR to a command that must succeed."""


@dataclass(frozen=True)
class Oversized:
    """A message over `max_literal`: read to its end and dropped (`retrieve`)."""

    size: int


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()[:300]


class Pop3Session:
    """One logged-in POP3 connection. Use as a context manager; leaving it
    sends QUIT only through `commit()` (a session left without it closes the
    connection and the server deletes nothing, RFC 1939 section 6).

    Each read waits at most `config.read_timeout`; connecting and logging in
    must be done within `config.connect_deadline`, the whole session within
    `config.session_deadline` (`DeadlineExceeded`)."""

    def __init__(self, config: ServerConfig, username: str, password: str):
        self.config = config
        self.host = config.host
        session_deadline = None
        if config.session_deadline is not None:
            session_deadline = Deadline(
                config.session_deadline,
                f"{config.host} did not finish within the {config.session_deadline:g} s a sync may take "
                "(SYNC_DEADLINE); what was stored is kept",
            )
        connect_deadline = session_deadline
        if config.connect_deadline is not None and (
            config.session_deadline is None or config.connect_deadline < config.session_deadline
        ):
            connect_deadline = Deadline(
                config.connect_deadline,
                f"{config.host} did not let us connect and log in within {config.connect_deadline:g} s "
                "(MAIL_CONNECTION_DEADLINE)",
            )
        self.deadline: Deadline | None = connect_deadline
        self.read_timeout = config.connect_timeout  # the greeting is part of connecting
        self.sock: socket.socket | None = None
        self.reader: io.BufferedReader | None = None
        self.capabilities: dict[str, list[str]] = {}
        address = resolve(
            config.host,
            config.port,
            allow_private=config.allow_private,
            allowed_ports=config.allowed_ports,
            timeout=config.connect_timeout,
            deadline=connect_deadline,
        )
        if config.encryption == "none" and not config.allow_plaintext:
            raise InsecureServer(
                f"{config.host}: unencrypted connections are not allowed (MAIL_ALLOW_PLAINTEXT)"
            )
        context = ssl_context(config)
        try:
            self._connect(address, context)
            greeting = self._expect_ok("greeting")
            self.capabilities = self._capa()
            if config.encryption == "starttls":
                if "STLS" not in self.capabilities:
                    raise InsecureServer(f"{config.host} does not offer STLS")
                self._send(b"STLS\r\n")
                self._expect_ok("STLS")
                self._wrap(context)
                self.capabilities = self._capa()  # what was said in clear counts for nothing
            self._login(username, password, greeting)
            self.capabilities = self._capa() or self.capabilities
        except MailServerError:
            self.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise InsecureServer(f"certificate of {config.host} not trusted: {exc.verify_message}") from exc
        except OSError as exc:
            self.close()
            raise MailServerError(f"cannot connect to {config.host}:{config.port}: {exc}") from exc
        self.deadline = session_deadline
        self.read_timeout = config.read_timeout

    # Connection --------------------------------------------------------------------

    def _connect(self, address: str, context: ssl.SSLContext) -> None:
        timeout = self.config.connect_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline.remaining())
        self.sock = socket.create_connection((address, self.config.port), timeout)
        if self.config.encryption == "tls":
            self._wrap(context)
        else:
            self.reader = io.BufferedReader(_DeadlineSocketIO(self.sock, self), buffer_size=65536)

    def _wrap(self, context: ssl.SSLContext) -> None:
        """TLS on the socket; a new read buffer, so nothing the server sent in
        clear after its STLS answer is ever read as part of the TLS session."""
        if self.sock is None:
            raise MailServerError(f"connection to {self.host} is closed")
        self._arm(self.sock)  # the handshake, within the deadline
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        if self.reader is not None:
            self.reader.detach()
        self.reader = io.BufferedReader(_DeadlineSocketIO(self.sock, self), buffer_size=65536)

    def _arm(self, sock: socket.socket) -> None:
        """The socket's timeout for the next read or send: the read timeout,
        or less when the deadline is nearer (`_DeadlineSocketIO` calls it)."""
        timeout = self.read_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline.remaining())
        if timeout != sock.gettimeout():
            sock.settimeout(timeout)

    def close(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.detach()
            self.reader = None
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def __enter__(self) -> "Pop3Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Lines -------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            raise MailServerError(f"connection to {self.host} is closed")
        self._arm(self.sock)
        self.sock.sendall(data)

    def _readline(self) -> bytes:
        if self.reader is None:
            raise MailServerError(f"connection to {self.host} is closed")
        line = self.reader.readline(self.config.max_line + 1)
        if len(line) > self.config.max_line:
            raise ProtocolViolation(f"server line longer than {self.config.max_line} bytes")
        if not line:
            raise MailServerError(f"{self.host} closed the connection")
        return line

    def _response(self) -> tuple[bool, bytes]:
        line = self._readline()
        if line.startswith(b"+OK"):
            return True, line[3:].strip()
        if line.startswith(b"-ERR"):
            return False, line[4:].strip()
        raise ProtocolViolation(f"{self.host} answered neither +OK nor -ERR: {_text(line[:80])!r}")

    def _expect_ok(self, what: str) -> bytes:
        ok, text = self._response()
        if not ok:
            raise Pop3Error(f"{self.host} refused {what}: {_text(text)}")
        return text

    def _multiline(self) -> bytes:
        """The body of a multi-line answer, dot-unstuffed, up to `max_literal`:
        one growing buffer (a bytes object per line cost ~30 times the data
        for short lines)."""
        body = self._read_multiline(skip_over_limit=False)
        if isinstance(body, Oversized):  # not so: raised instead
            raise ProtocolViolation(f"server answer of over {self.config.max_literal} bytes")
        return body

    def _read_multiline(self, *, skip_over_limit: bool) -> "bytes | Oversized":
        """As `_multiline`; with `skip_over_limit`, an answer over `max_literal`
        is read to its end and dropped (`Oversized`), the session going on."""
        body = bytearray()
        limit = self.config.max_literal
        readline = self._readline
        skipped = 0
        while True:
            line = readline()
            if line[:1] == b".":
                if line in (b".\r\n", b".\n"):
                    break
                line = line[1:]
            if skipped:
                skipped += len(line)
            elif len(body) + len(line) > limit:
                if not skip_over_limit:
                    raise ProtocolViolation(f"server answer of over {limit} bytes")
                skipped = len(body) + len(line)
                body = bytearray()
            else:
                body += line
        return Oversized(skipped) if skipped else bytes(body)

    def _command(self, command: bytes) -> tuple[bool, bytes]:
        self._send(command + b"\r\n")
        return self._response()

    def _pipelined(self, commands: list[bytes], read: Callable[[], T]) -> Iterator[T]:
        """Send `commands` and yield `read()` for each answer, in order:
        up to PIPELINE_WINDOW commands ahead when the server pipelines (a
        few hundred bytes, which socket buffers always take, so neither side
        waits on the other), one at a time when it does not."""
        window = PIPELINE_WINDOW if "PIPELINING" in self.capabilities else 1
        sent = received = 0
        while received < len(commands):
            if sent < len(commands) and sent - received <= window // 2:
                upto = min(len(commands), received + window)
                self._send(b"".join(c + b"\r\n" for c in commands[sent:upto]))
                sent = upto
            yield read()
            received += 1

    # Log in ------------------------------------------------------------------------

    def _capa(self) -> dict[str, list[str]]:
        ok, _ = self._command(b"CAPA")
        if not ok:
            return {}  # RFC 1939 servers without CAPA
        capabilities: dict[str, list[str]] = {}
        for line in self._multiline().decode("ascii", "replace").splitlines():
            words = line.split()
            if words:
                capabilities[words[0].upper()] = [w.upper() for w in words[1:]]
        return capabilities

    def _login(self, username: str, password: str, greeting: bytes) -> None:
        if any(c in value for value in (username, password) for c in "\r\n\0"):
            raise AuthenticationFailed("the user name or password holds a line break")
        user, secret = username.encode(), password.encode()
        timestamp = _TIMESTAMP.search(greeting)
        if self.config.encryption == "none" and timestamp is not None:
            # No TLS: APOP, so a passive listener never sees the password. An active
            # attacker can strip the timestamp from the greeting and get USER/PASS.
            digest = hashlib.md5(timestamp.group(0) + secret, usedforsecurity=False).hexdigest()
            self._login_answer(self._command(b"APOP " + user + b" " + digest.encode()))
        elif "PLAIN" in self.capabilities.get("SASL", []):
            token = base64.b64encode(b"\0" + user + b"\0" + secret)
            self._login_answer(self._command(b"AUTH PLAIN " + token))
        else:
            ok, text = self._command(b"USER " + user)
            if not ok:
                self._login_answer((ok, text))
            self._login_answer(self._command(b"PASS " + secret))

    def _login_answer(self, answer: tuple[bool, bytes]) -> None:
        ok, text = answer
        if ok:
            return
        if any(code in text.upper() for code in _TEMPORARY):
            raise MailServerError(f"{self.host} cannot open the mailbox now: {_text(text)}")
        raise AuthenticationFailed(f"the server refused the login: {_text(text)[:200]}")

    # Commands ----------------------------------------------------------------------

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    def listing(self) -> dict[int, int]:
        """{message number: size in octets} (LIST)."""
        self._send(b"LIST\r\n")
        self._expect_ok("LIST")
        sizes: dict[int, int] = {}
        for line in io.BytesIO(self._multiline()):
            words = line.split()
            if len(words) >= 2:
                sizes[_number(words[0])] = _number(words[1])
                _check_listed(len(sizes))
        return sizes

    def uidl(self) -> dict[int, str] | None:
        """{message number: unique id} (UIDL), or None when the server has no UIDL."""
        ok, _ = self._command(b"UIDL")
        if not ok:
            return None
        uidls: dict[int, str] = {}
        for line in io.BytesIO(self._multiline()):
            words = line.split()
            if len(words) >= 2:
                # latin-1: one character per byte, so two different ids never read as one.
                uidls[_number(words[0])] = words[1].decode("latin-1")
                _check_listed(len(uidls))
        return uidls

    def headers(self, numbers: Iterable[int]) -> Iterator[tuple[int, bytes | None]]:
        """Each message's header (TOP n 0), or None where the server refuses it."""
        numbers = list(numbers)
        return zip(numbers, self._pipelined([b"TOP %d 0" % n for n in numbers], self._body), strict=True)

    def retrieve(self, numbers: Iterable[int]) -> Iterator[tuple[int, bytes | Oversized | None]]:
        """Each message in full (RETR), or None where the server refuses it,
        or `Oversized` where it is over `max_literal` (never held in memory)."""
        numbers = list(numbers)
        return zip(numbers, self._pipelined([b"RETR %d" % n for n in numbers], self._message), strict=True)

    def _message(self) -> bytes | Oversized | None:
        ok, _ = self._response()
        return self._read_multiline(skip_over_limit=True) if ok else None

    def _body(self) -> bytes | None:
        ok, _ = self._response()
        return self._multiline() if ok else None

    def delete(self, numbers: Iterable[int]) -> list[int]:
        """Mark the messages deleted (DELE); the numbers the server refused.
        Nothing is deleted until `commit()`."""
        numbers = list(numbers)
        answers = self._pipelined([b"DELE %d" % n for n in numbers], self._response)
        return [n for n, (ok, _) in zip(numbers, answers, strict=True) if not ok]

    def commit(self) -> None:
        """QUIT: the server deletes what was marked (its UPDATE state) and
        says +OK, or -ERR when it could not (then nothing is deleted)."""
        try:
            self._send(b"QUIT\r\n")
            self._expect_ok("QUIT (the messages marked for deletion stay on the server)")
        finally:
            self.close()


def _check_listed(count: int) -> None:
    if count > MAX_LISTED:
        raise ProtocolViolation(f"the server lists over {MAX_LISTED} messages")


def _number(word: bytes) -> int:
    if not word.isdigit() or len(word) > 10:
        raise ProtocolViolation(f"not a message number or size: {_text(word[:20])!r}")
    return int(word)
