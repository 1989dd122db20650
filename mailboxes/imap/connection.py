"""IMAP connection policy: which addresses may be reached, TLS, and a socket
whose reads are bounded.

* the host name is resolved once; loopback, private, link-local, reserved and
  cloud-metadata addresses are refused unless `allow_private` (local and test
  settings) and the connection goes to that one address (no DNS rebinding
  between check and connect); an IPv6 address that carries an IPv4 one
  (mapped, 6to4, NAT64 64:ff9b::/96) is judged by that IPv4 address too,
  NAT64's by it alone, and local-use NAT64 (64:ff9b:1::/48) is refused;
* TLS and STARTTLS verify the certificate and the host name (against the
  name the user gave, not the address);
* every socket has a timeout per read, and a connection a total deadline
  besides: a server that trickles its answers a byte at a time cannot hold a
  worker past it (`DeadlineExceeded`);
* a server line longer than `max_line` or a literal larger than
  `max_literal` aborts the connection with an error;
* only the ports in `allowed_ports` (when given) may be reached.
"""

import imaplib
import io
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from typing_extensions import Buffer

from mailboxes.imap.errors import AddressNotAllowed, DeadlineExceeded, MailServerError, ProtocolViolation

logger = logging.getLogger(__name__)

# --- Connection policy ------------------------------------------------------------

# Not "private" by ipaddress's reckoning but never a mail server we may reach.
_EXTRA_BLOCKED = [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd00:ec2::/32")]
# NAT64 (RFC 6052's well-known prefix): a translator delivers to the IPv4
# address in the low 32 bits, so that address is judged, alone (the prefix
# lies inside ::/8, which ipaddress calls reserved: 8.8.8.8 behind it is as
# public as 8.8.8.8).
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: a network picks its own prefix length
# inside it (/48 to /96), so where the IPv4 address sits is only known there;
# refused, as any address that only means something inside one network.
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")


def address_allowed(address: str) -> bool:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            # fec0::/10, deprecated since 2004 (RFC 3879): only ever inside a
            # site, often with a private IPv4 address in its low bits.
            return False
        if ip.ipv4_mapped:
            return address_allowed(str(ip.ipv4_mapped))
        if ip in _NAT64_WELL_KNOWN:
            return address_allowed(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip in _NAT64_LOCAL_USE:
            return False
        if ip.sixtofour and not address_allowed(str(ip.sixtofour)):
            # 6to4 (2002::/16): a relay delivers to the IPv4 address in bits 16-48.
            return False
    blocked = (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local  # includes 169.254.169.254, the cloud metadata service
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or any(ip in network for network in _EXTRA_BLOCKED)
    )
    return not blocked


def port_allowed(port: int, allowed_ports: frozenset[int] | None) -> bool:
    """Whether `port` may be reached: any with `allowed_ports` None."""
    return allowed_ports is None or port in allowed_ports


_SockAddr = tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
_AddrInfo = list[tuple[socket.AddressFamily, socket.SocketKind, int, str, _SockAddr]]


def _getaddrinfo(host: str, port: int, timeout: float | None, deadline: "Deadline | None") -> _AddrInfo:
    """`socket.getaddrinfo`, given up after `timeout` seconds or at
    `deadline` (DeadlineExceeded): getaddrinfo itself cannot be given a
    timeout, and a slow DNS server would hold the worker outside every
    deadline. It runs on a daemon thread, which a DNS server that never
    answers leaves waiting until the system resolver gives up (its own
    timeout and attempts, resolv.conf); nothing waits for it."""
    if timeout is None and deadline is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    outcome: list[_AddrInfo | BaseException] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    wait = timeout if timeout is not None else float("inf")
    if deadline is not None:
        wait = min(wait, deadline.remaining())
    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(wait)
    if not outcome:
        if deadline is not None:
            deadline.remaining()  # past it: DeadlineExceeded
        raise MailServerError(f"cannot resolve {host}: no answer within {wait:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def resolve(
    host: str,
    port: int,
    *,
    allow_private: bool,
    allowed_ports: frozenset[int] | None = None,
    timeout: float | None = None,
    deadline: "Deadline | None" = None,
) -> str:
    """One address for `host`, checked against the policy, looked up within
    `timeout` seconds and `deadline` (when given). The errors name the host,
    never the address it resolved to (they reach the account's
    `last_sync_error`: an internal address is not the user's to learn); the
    log has it."""
    if not port_allowed(port, allowed_ports):
        raise AddressNotAllowed(
            f"port {port} is not a mail port this service connects to (MAIL_ALLOWED_PORTS)"
        )
    try:
        infos = _getaddrinfo(host, port, timeout, deadline)
    except (socket.gaierror, UnicodeError) as exc:
        raise MailServerError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[str] = []
    for *_, sockaddr in infos:
        # AF_INET and AF_INET6 give the address as text; (int, bytes) is a
        # family this Python does not know, never the answer for a host name.
        if not isinstance(sockaddr[0], str):
            raise MailServerError(f"{host} resolves to an address of an unknown family")
        addresses.append(sockaddr[0])
    if not allow_private:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            logger.warning(
                "mail server %s refused: it resolves to the non-public address %s", host, refused[0]
            )
            raise AddressNotAllowed(f"{host} resolves to an address this service may not connect to")
    if not addresses:
        raise MailServerError(f"{host} has no address")
    return addresses[0]


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    encryption: str  # "tls", "starttls" or "none"
    allow_private: bool = False
    allow_plaintext: bool = False
    ca_file: str | None = None
    connect_timeout: float = 20.0
    read_timeout: float = 120.0
    # Seconds from the first packet to logged in (connect, TLS, greeting,
    # STARTTLS, login), and for the whole session; None: no deadline.
    connect_deadline: float | None = 60.0
    session_deadline: float | None = None
    allowed_ports: frozenset[int] | None = None  # None: any port
    max_line: int = 8 * 1024 * 1024
    max_literal: int = 64 * 1024 * 1024


# `ssl.create_default_context()` reads the system's CA bundle: ~30 ms, more
# than the rest of a delivery or a login on loopback. One context per CA file
# (and its inode, size and times, so a replaced file is read again) serves every
# connection, IMAP and SMTP; SSLContext is safe to share between threads.
_CONTEXTS: dict[tuple[str | None, tuple[int, ...]], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def ssl_context(config: ServerConfig) -> ssl.SSLContext:
    """The verifying client context for `config.ca_file` (plus the system's
    CAs), TLS 1.2 at least; shared, so never change it."""
    try:
        # Any replacement of the file changes one of these, even a copy that
        # keeps the modification time.
        info = os.stat(config.ca_file) if config.ca_file else None
        stamp: tuple[int, ...] = ()
        if info:
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    except OSError:
        stamp = (-1,)  # loading it below says what is wrong with it
    key = (config.ca_file, stamp)
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
            if config.ca_file:
                context.load_verify_locations(cafile=config.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if len(_CONTEXTS) >= 8:
                _CONTEXTS.clear()
            _CONTEXTS[key] = context
    return context


# --- imaplib with a pinned address, bounded reads and a deadline -------------------


class Deadline:
    """A point in time (`time.monotonic()`) a connection must not outlive,
    and what to say when it does."""

    def __init__(self, seconds: float, message: str) -> None:
        self.at = time.monotonic() + seconds
        self.message = message

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(self.message)
        return left


class _Armed(Protocol):
    """An owner of a socket that sets its timeout before each read: the IMAP
    client here, the POP3 one (`mailboxes.pop3`)."""

    def _arm(self, sock: socket.socket) -> None: ...


class _DeadlineSocketIO(io.RawIOBase):
    """The socket's reads, each waiting at most the read timeout and never
    past the owner's deadline: a server that sends one byte just before each
    read timeout is stopped at the deadline, not after 8 MB of them. Shared
    with the POP3 client."""

    def __init__(self, sock: socket.socket, owner: _Armed) -> None:
        super().__init__()
        self._sock, self._owner = sock, owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int:
        self._owner._arm(self._sock)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self._owner._arm(self._sock)  # past the deadline: DeadlineExceeded, not a timeout
            raise


class _BoundedReads(imaplib.IMAP4):
    max_line: int
    max_literal: int
    read_timeout: float
    deadline: Deadline | None = None
    _reader: io.BufferedReader | None = None
    _reader_sock: socket.socket | None = None

    def _arm(self, sock: socket.socket) -> None:
        """Set the socket's timeout for the next read or send: the read
        timeout, or less when the deadline is nearer."""
        timeout = self.read_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline.remaining())
        if timeout != sock.gettimeout():  # IMAPClient sets it too
            sock.settimeout(timeout)

    def _buffered(self) -> io.BufferedReader:
        # A new socket (after STARTTLS) gets a new buffer: nothing read in
        # clear is ever taken as part of the encrypted session.
        if self._reader is None or self._reader_sock is not self.sock:
            self._reader_sock = self.sock
            self._reader = io.BufferedReader(_DeadlineSocketIO(self.sock, self), buffer_size=65536)
        return self._reader

    def readline(self) -> bytes:
        line = self._buffered().readline(self.max_line + 1)
        if len(line) > self.max_line:
            raise ProtocolViolation(f"server line longer than {self.max_line} bytes")
        return line

    def read(self, size: int) -> bytes:
        if size > self.max_literal:
            raise ProtocolViolation(
                f"server literal of {size} bytes is over the {self.max_literal}-byte limit"
            )
        return self._buffered().read(size)

    def send(self, data: "Buffer") -> None:
        self._arm(self.sock)
        super().send(data)

    def shutdown(self) -> None:
        if self._reader is not None:
            self._reader.detach()  # the socket itself is closed below
            self._reader = None
        super().shutdown()


class _PinnedIMAP4(_BoundedReads):
    def __init__(
        self, host: str, address: str, port: int, config: ServerConfig, deadline: Deadline | None = None
    ):
        self._address = address
        self.max_line, self.max_literal = config.max_line, config.max_literal
        self._connect_timeout = config.connect_timeout
        self.deadline = deadline
        self.read_timeout = config.connect_timeout  # the greeting is part of connecting
        super().__init__(host, port, timeout=config.connect_timeout)
        self.read_timeout = config.read_timeout

    def _timeout(self, timeout: float | None) -> float:
        timeout = timeout or self._connect_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline.remaining())
        return timeout

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection((self._address, self.port), self._timeout(timeout))


class _PinnedIMAP4TLS(_PinnedIMAP4):
    def __init__(
        self,
        host: str,
        address: str,
        port: int,
        config: ServerConfig,
        context: ssl.SSLContext,
        deadline: Deadline | None = None,
    ):
        self._context = context
        super().__init__(host, address, port, config, deadline)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = super()._create_socket(timeout)
        sock.settimeout(self._timeout(timeout))  # the handshake, in all
        return self._context.wrap_socket(sock, server_hostname=self.host)
