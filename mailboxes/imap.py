"""IMAP for the sync engine: connection policy and the few commands it needs.

Knows nothing of Django models or HTTP. Security rules live here:

* the host name is resolved once; loopback, private, link-local, reserved and
  cloud-metadata addresses are refused unless `allow_private` (local and test
  settings) and the connection goes to that one address (no DNS rebinding
  between check and connect);
* TLS and STARTTLS verify the certificate and the host name (against the
  name the user gave, not the address); a server that does not offer STARTTLS
  when the account asks for it is refused, never downgraded;
* every socket has a timeout; a server line longer than `max_line` or a
  literal larger than `max_literal` aborts the connection with an error.
"""

import contextlib
import imaplib
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Literal, TypeAlias, overload

from imapclient import IMAPClient
from imapclient.datetime_util import parse_to_datetime
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.imapclient import SocketTimeout, seq_to_parenstr_upper
from imapclient.response_parser import parse_fetch_response

# --- Errors ---------------------------------------------------------------------


class MailServerError(Exception):
    """The server or the network failed; worth retrying later."""


class AuthenticationFailed(MailServerError):
    """The server refused the credentials; retrying will not help."""


class InsecureServer(MailServerError):
    """The server cannot give the security the account asks for."""


class AddressNotAllowed(MailServerError):
    """The host resolves to an address this deployment may not connect to."""


class ProtocolViolation(MailServerError):
    """The server sent something absurd (an endless line, a huge literal)."""


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


def ssl_context(config: ServerConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
    if config.ca_file:
        context.load_verify_locations(cafile=config.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# --- imaplib with a pinned address and bounded reads -------------------------------

# One message's FETCH items by name (b"UID", b"FLAGS", b"BODY[]", ...), as the
# parsers give them: numbers, tuples of flags, datetimes, bytes, None.
FetchData: TypeAlias = dict[bytes, object]


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


class _Client(IMAPClient):
    """IMAPClient over our imaplib subclasses."""

    def __init__(self, config: ServerConfig, address: str, context: ssl.SSLContext):
        self._config, self._address, self._context = config, address, context
        super().__init__(
            config.host,
            port=config.port,
            ssl=config.encryption == "tls",
            ssl_context=context,
            timeout=SocketTimeout(config.connect_timeout, config.read_timeout),
        )
        self.normalise_times = False  # keep INTERNALDATE's zone: aware datetimes

    def _create_IMAP4(self) -> imaplib.IMAP4:
        if self.ssl:
            return _PinnedIMAP4TLS(self.host, self._address, self.port, self._config, self._context)
        return _PinnedIMAP4(self.host, self._address, self.port, self._config)

    def copy_with_code(self, uids: Iterable[int], folder: str) -> bytes:
        """UID COPY, returning the text of the server's answer with its
        response code (`[COPYUID ...]`, RFC 4315). IMAPClient.copy returns
        None: imaplib keeps only the untagged data of a UID command."""
        typ, data = self._imap._simple_command(
            "UID", "COPY", sequence_set(uids), self._normalise_folder(folder)
        )
        self._checkok("copy", typ, data)
        return b" ".join(d for d in data if isinstance(d, bytes))

    def uid_fetch(
        self, message_set: str, items: list[str], modifiers: list[str] | None = None
    ) -> dict[int, FetchData]:
        """UID FETCH on a sequence-set string (`1:500,731`); IMAPClient.fetch
        takes only lists of single ids. Results are keyed by their UID item,
        never by sequence number: unsolicited FETCH responses (another
        client's flag change, sent by sequence number) are dropped."""
        tag = self._imap._command(
            "UID",
            "FETCH",
            message_set,
            seq_to_parenstr_upper(items),
            seq_to_parenstr_upper(modifiers) if modifiers else None,
        )
        typ, data = self._imap._command_complete("FETCH", tag)
        self._checkok("fetch", typ, data)
        typ, data = self._imap._untagged_response(typ, data, "FETCH")
        parsed = parse_fetch_fast(data)
        if parsed is None:
            parsed = parse_fetch_response(data, self.normalise_times, uid_is_key=False)
        by_uid: dict[int, FetchData] = {}
        for item in parsed.values():
            uid = item.get(b"UID")
            if isinstance(uid, int):
                by_uid[check_uid(uid)] = item
        return by_uid


_FETCH_START = re.compile(rb"(\d+) \(")
_FETCH_ITEM = re.compile(
    rb"(UID|RFC822\.SIZE|MODSEQ|FLAGS|INTERNALDATE|BODY\[\]) "
    rb'(?:(\d{1,20})|\(([^()"{}]*)\)|"([^"\\]*)"|\{(\d{1,20})\}$)'
)
_FETCH_KIND = {b"UID": 2, b"RFC822.SIZE": 2, b"FLAGS": 3, b"MODSEQ": 3, b"INTERNALDATE": 4, b"BODY[]": 5}


def parse_fetch_fast(data: list[bytes | tuple[bytes, bytes] | None]) -> dict[int, FetchData] | None:
    """imaplib's FETCH responses as IMAPClient's `parse_fetch_response(...,
    normalise_times=False, uid_is_key=False)` returns them (by sequence
    number; numbers, flag tuples, dates, literals), for the items the sync
    asks for in the shape servers send them, with a few regular expressions
    instead of IMAPClient's character-by-character lexer (most of the CPU of
    a FETCH). None for anything else, which IMAPClient then parses."""
    if data == [None]:
        return {}
    parsed: dict[int, FetchData] = {}
    position, count = 0, len(data)
    while position < count:
        entry = data[position]
        position += 1
        literal = None
        if isinstance(entry, tuple) and len(entry) == 2:
            line, literal = entry
            if position >= count or data[position] != b")":
                return None
            position += 1
        elif isinstance(entry, bytes) and entry.endswith(b")"):
            line = entry[:-1]
        else:
            return None
        start = _FETCH_START.match(line)
        if start is None:
            return None
        fields: FetchData = {}
        at, end = start.end(), len(line)
        while at < end:
            match = _FETCH_ITEM.match(line, at)
            if match is None or match.lastindex != _FETCH_KIND[match.group(1)]:
                return None
            name, kind = match.group(1), match.lastindex
            if kind == 2:
                fields[name] = int(match.group(2))
            elif kind == 3:
                fields[name] = tuple(int(a) if a.isdigit() else a for a in match.group(3).split())
            elif kind == 4:
                try:
                    fields[name] = parse_to_datetime(match.group(4), normalise=False)
                except ValueError:
                    fields[name] = None
            else:
                if literal is None or int(match.group(5)) != len(literal):
                    return None
                fields[name] = literal
            at = match.end()
            if at < end:
                if line[at : at + 1] != b" ":
                    return None
                at += 1
        seq = int(start.group(1))
        parsed.setdefault(seq, {b"SEQ": seq}).update(fields)
    return parsed


# --- Results ----------------------------------------------------------------------


@dataclass
class FolderInfo:
    name: str
    delimiter: str
    flags: tuple[str, ...]

    @property
    def selectable(self) -> bool:
        return not {"\\noselect", "\\nonexistent"} & {f.lower() for f in self.flags}


@dataclass
class FolderState:
    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None


@dataclass
class FetchedMessage:
    uid: int
    flags: tuple[str, ...]
    internal_date: datetime | None
    size: int
    modseq: int | None
    raw: bytes | None = None


@dataclass
class FlagChanges:
    changed: dict[int, tuple[tuple[str, ...], int | None]] = field(default_factory=dict)
    vanished: set[int] = field(default_factory=set)


MAX_UID = 2**32 - 1  # RFC 3501: nz-number, 32 bits
MAX_MODSEQ = 2**63 - 1  # RFC 7162: mod-sequence-value, 63 bits


def check_uid(value: object) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_UID:
        raise ProtocolViolation(f"the server sent UID {str(value)[:40]}")
    return value


@overload
def check_number(
    value: object, *, name: str, low: int = 0, high: int = MAX_MODSEQ, optional: Literal[False] = False
) -> int: ...
@overload
def check_number(
    value: object, *, name: str, low: int = 0, high: int = MAX_MODSEQ, optional: Literal[True]
) -> int | None: ...
def check_number(
    value: object, *, name: str, low: int = 0, high: int = MAX_MODSEQ, optional: bool = False
) -> int | None:
    """A number from a server reply, in range, or ProtocolViolation."""
    if value is None and optional:
        return None
    if not isinstance(value, int | str | bytes):  # None, a tuple, a datetime: what int() refuses
        raise ProtocolViolation(f"the server sent {name} {str(value)[:40]!r}")
    try:
        number = int(value)
    except ValueError as exc:
        raise ProtocolViolation(f"the server sent {name} {str(value)[:40]!r}") from exc
    if not low <= number <= high:
        raise ProtocolViolation(f"the server sent {name} {number}, out of range")
    return number


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def sequence_set(uids: Iterable[int]) -> str:
    """`1:3,7,9:10` from sorted or unsorted UIDs: short commands for big sets."""
    ordered = sorted(set(uids))
    ranges: list[list[int]] = []
    for uid in ordered:
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(f"{a}:{b}" if a != b else str(a) for a, b in ranges)


_SEQ_ITEM = re.compile(r"^(\d+)(?::(\d+))?$")


def parse_sequence_set(text: str, *, low: int = 1, high: int = MAX_UID, limit: int = 2_000_000) -> set[int]:
    """UIDs of a server's sequence set (VANISHED, ESEARCH) within low..high.
    Ranges are clipped before they are expanded, and the result is bounded:
    `1:4294967295` from a hostile server costs nothing."""
    uids: set[int] = set()
    for item in text.split(","):
        match = _SEQ_ITEM.match(item.strip())
        if not match:
            raise ProtocolViolation(f"bad sequence set item {item[:40]!r}")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        first, last = max(min(first, last), low), min(max(first, last), high)
        if first > last:
            continue
        if len(uids) + (last - first + 1) > limit:
            raise ProtocolViolation("sequence set too large")
        uids.update(range(first, last + 1))
    return uids


# --- Session ---------------------------------------------------------------------


class ImapSession:
    """One logged-in IMAP connection. Use as a context manager."""

    def __init__(self, config: ServerConfig, username: str, password: str):
        self.config = config
        address = resolve(config.host, config.port, allow_private=config.allow_private)
        if config.encryption == "none" and not config.allow_plaintext:
            raise InsecureServer(
                f"{config.host}: unencrypted connections are not allowed (MAIL_ALLOW_PLAINTEXT)"
            )
        context = ssl_context(config)
        try:
            self.client = _Client(config, address, context)
            if config.encryption == "starttls":
                if not self.client.has_capability("STARTTLS"):
                    raise InsecureServer(f"{config.host} does not offer STARTTLS")
                self.client.starttls(context)
            self.client.login(username, password)
        except MailServerError:
            self._close()
            raise
        except LoginError as exc:
            self._close()
            raise AuthenticationFailed(f"the server refused the login: {_text(exc)[:200]}") from exc
        except ssl.SSLCertVerificationError as exc:
            self._close()
            raise InsecureServer(f"certificate of {config.host} not trusted: {exc.verify_message}") from exc
        except (OSError, IMAPClientError, imaplib.IMAP4.error) as exc:
            self._close()
            raise MailServerError(f"cannot connect to {config.host}:{config.port}: {exc}") from exc
        capabilities = {_text(c).upper() for c in self.client.capabilities()}
        self.condstore = "CONDSTORE" in capabilities or "QRESYNC" in capabilities
        self.qresync = False
        if "QRESYNC" in capabilities:
            enabled = {_text(c).upper() for c in self.client.enable("QRESYNC")}
            self.qresync = "QRESYNC" in enabled
        self.special_use = "SPECIAL-USE" in capabilities
        self.esearch = "ESEARCH" in capabilities

    def _close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to save
                client.shutdown()

    def __enter__(self) -> "ImapSession":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.client.logout()
        except Exception:
            self._close()

    # Folders ----------------------------------------------------------------

    def list_folders(self) -> list[FolderInfo]:
        raw = self.client.list_folders()
        folders = []
        for flags, delimiter, name in raw:
            folders.append(
                FolderInfo(
                    name=_text(name),
                    delimiter=_text(delimiter) if delimiter else "",
                    flags=tuple(_text(f) for f in flags),
                )
            )
        return folders

    def folder_status(self, name: str) -> FolderState:
        items = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"]
        if self.condstore:
            items.append(b"HIGHESTMODSEQ")
        return self._state(self.client.folder_status(name, items), exists_key=b"MESSAGES")

    def select(self, name: str) -> FolderState:
        """EXAMINE (read-only): syncing never changes the mailbox."""
        return self._state(self.client.select_folder(name, readonly=True), exists_key=b"EXISTS")

    def _state(self, response: dict[bytes, object], *, exists_key: bytes) -> FolderState:
        modseq = response.get(b"HIGHESTMODSEQ") if self.condstore else None
        return FolderState(
            uidvalidity=check_number(response.get(b"UIDVALIDITY"), name="UIDVALIDITY", low=1, high=MAX_UID),
            uidnext=check_number(
                response.get(b"UIDNEXT"), name="UIDNEXT", low=1, high=MAX_UID + 1, optional=True
            ),
            exists=check_number(response.get(exists_key, 0), name="EXISTS", high=MAX_UID),
            highestmodseq=check_number(modseq, name="HIGHESTMODSEQ", optional=True),
        )

    # Messages -----------------------------------------------------------------

    def uids(self, low: int = 1) -> set[int]:
        """Every UID >= `low` in the selected folder."""
        criteria = ["UID", f"{low}:*"]
        if self.esearch:
            response = self.client._raw_command_untagged(
                b"SEARCH", [b"RETURN", b"(ALL)", *[c.encode() for c in criteria]], response_name="ESEARCH"
            )
            uids: set[int] = set()
            for line in response:
                text = _text(line)
                match = re.search(r"\bALL (\S+)", text)
                if match:
                    uids |= parse_sequence_set(match.group(1), low=low)
        else:
            uids = {
                uid for uid in self.client.search(criteria) if isinstance(uid, int) and 1 <= uid <= MAX_UID
            }
        # `n:*` always matches the highest UID, even one below n.
        return {uid for uid in uids if uid >= low}

    def uids_in(self, uids: Iterable[int]) -> set[int]:
        """Which of these UIDs the selected folder still has."""
        wanted = set(uids)
        if not wanted:
            return set()
        found = self.client.search(["UID", sequence_set(wanted)])
        return {uid for uid in found if uid in wanted}

    def message_ids(self, uids: Iterable[int]) -> dict[int, str]:
        """The Message-ID of each UID in the selected folder ("" if none)."""
        from messages.parsing import message_ids

        response = self.client.uid_fetch(sequence_set(uids), ["UID", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        result = {}
        for uid, data in response.items():
            header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER.FIELDS")), b"") or b""
            if not isinstance(header, bytes):  # a literal or a quoted string; NIL (None) is b"" above
                raise ProtocolViolation(f"the server sent a Message-ID header of {type(header).__name__}")
            ids = message_ids(header.decode("utf-8", "replace").partition(":")[2])
            result[uid] = ids[0] if ids else ""
        return result

    def fetch_meta(self, uids: Iterable[int]) -> dict[int, FetchedMessage]:
        """UIDs and sizes (to cut batches by bytes and refuse huge mail
        unfetched); flags and dates come with the bodies."""
        return self._fetch(uids, ["UID", "RFC822.SIZE"])

    def fetch_full(self, uids: Iterable[int]) -> dict[int, FetchedMessage]:
        items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[]"]
        return self._fetch(uids, items + (["MODSEQ"] if self.condstore else []))

    def fetch_headers(self, uids: Iterable[int]) -> dict[int, FetchedMessage]:
        items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[HEADER]"]
        return self._fetch(uids, items + (["MODSEQ"] if self.condstore else []))

    def _fetch(
        self, uids: Iterable[int], items: list[str], modifiers: list[str] | None = None
    ) -> dict[int, FetchedMessage]:
        uid_list = list(uids)
        if not uid_list:
            return {}
        response = self.client.uid_fetch(sequence_set(uid_list), items, modifiers)
        return {uid: self._message(uid, data) for uid, data in response.items()}

    @staticmethod
    def _message(uid: int, data: FetchData) -> FetchedMessage:
        raw = data.get(b"BODY[]")
        if raw is None:
            raw = data.get(b"BODY[HEADER]")
        modseq = data.get(b"MODSEQ")
        if isinstance(modseq, tuple | list):
            modseq = modseq[0] if modseq else None
        internal = data.get(b"INTERNALDATE")
        flags = data.get(b"FLAGS", ())
        return FetchedMessage(
            uid=uid,
            flags=tuple(_text(f)[:128] for f in flags) if isinstance(flags, tuple | list) else (),
            internal_date=internal if isinstance(internal, datetime) else None,
            size=check_number(data.get(b"RFC822.SIZE", 0) or 0, name="RFC822.SIZE"),
            modseq=check_number(modseq, name="MODSEQ", optional=True),
            raw=raw if isinstance(raw, bytes) else None,
        )

    def flag_changes(self, *, since_modseq: int, low: int, high: int) -> FlagChanges:
        """Flags changed since `since_modseq` (CONDSTORE) among UIDs
        low..high and, with QRESYNC, the UIDs of that range expunged since."""
        changes = FlagChanges()
        if high < low:
            return changes
        modifiers = [f"CHANGEDSINCE {since_modseq}"] + (["VANISHED"] if self.qresync else [])
        self.client._imap.untagged_responses.pop("VANISHED", None)
        response = self.client.uid_fetch(f"{low}:{high}", ["UID", "FLAGS"], modifiers)
        for uid, data in response.items():
            message = self._message(uid, data)
            changes.changed[message.uid] = (message.flags, message.modseq)
        for line in self.client._imap.untagged_responses.pop("VANISHED", []):
            text = _text(line)
            text = re.sub(r"^\(EARLIER\)\s*", "", text, flags=re.IGNORECASE)
            changes.vanished |= parse_sequence_set(text, low=low, high=high)
        return changes

    def all_flags(self, *, low: int, high: int) -> dict[int, tuple[str, ...]]:
        """FLAGS of every message with a UID in low..high: the fallback
        without CONDSTORE."""
        if high < low:
            return {}
        response = self.client.uid_fetch(f"{low}:{high}", ["UID", "FLAGS"])
        return {uid: self._message(uid, data).flags for uid, data in response.items() if low <= uid <= high}
