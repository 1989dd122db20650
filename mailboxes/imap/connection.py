"""IMAP connection policy: which addresses may be reached, TLS, and a socket
whose reads are bounded.

* the host name is resolved once; loopback, private, link-local, reserved and
  cloud-metadata addresses are refused unless `allow_private` (local and test
  settings) and the connection goes to that one address (no DNS rebinding
  between check and connect);
* TLS and STARTTLS verify the certificate and the host name (against the
  name the user gave, not the address);
* every socket has a timeout; a server line longer than `max_line` or a
  literal larger than `max_literal` aborts the connection with an error.
"""

import imaplib
import ipaddress
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import IO

from mailboxes.imap.errors import AddressNotAllowed, MailServerError, ProtocolViolation

# --- Connection policy ------------------------------------------------------------

# Not "private" by ipaddress's reckoning but never a mail server we may reach.
_EXTRA_BLOCKED = [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd00:ec2::/32")]


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
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


def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """One address for `host`, checked against the policy."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
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
            raise AddressNotAllowed(f"{host} resolves to a non-public address ({refused[0]})")
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


# --- imaplib with a pinned address and bounded reads -------------------------------


class _BoundedReads(imaplib.IMAP4):
    max_line: int
    max_literal: int
    file: IO[bytes]  # imaplib opens it with `sock.makefile("rb")`

    def readline(self) -> bytes:
        line = self.file.readline(self.max_line + 1)
        if len(line) > self.max_line:
            raise ProtocolViolation(f"server line longer than {self.max_line} bytes")
        return line

    def read(self, size: int) -> bytes:
        if size > self.max_literal:
            raise ProtocolViolation(
                f"server literal of {size} bytes is over the {self.max_literal}-byte limit"
            )
        return super().read(size)


class _PinnedIMAP4(_BoundedReads):
    def __init__(self, host: str, address: str, port: int, config: ServerConfig):
        self._address = address
        self.max_line, self.max_literal = config.max_line, config.max_literal
        self._connect_timeout = config.connect_timeout
        super().__init__(host, port, timeout=config.connect_timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection((self._address, self.port), timeout or self._connect_timeout)


class _PinnedIMAP4TLS(_PinnedIMAP4):
    def __init__(self, host: str, address: str, port: int, config: ServerConfig, context: ssl.SSLContext):
        self._context = context
        super().__init__(host, address, port, config)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = super()._create_socket(timeout)
        return self._context.wrap_socket(sock, server_hostname=self.host)
