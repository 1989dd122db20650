"""The IMAP session: one logged-in connection and the few commands the sync
engine needs. A server that does not offer STARTTLS when the account asks
for it is refused, never downgraded."""

import contextlib
import imaplib
import re
import ssl
from collections.abc import Iterable
from datetime import datetime

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.imapclient import SocketTimeout, seq_to_parenstr_upper
from imapclient.response_parser import parse_fetch_response

from mailboxes.imap.connection import (
    Deadline,
    ServerConfig,
    _PinnedIMAP4,
    _PinnedIMAP4TLS,
    resolve,
    ssl_context,
)
from mailboxes.imap.errors import AuthenticationFailed, InsecureServer, MailServerError, ProtocolViolation
from mailboxes.imap.responses import (
    MAX_UID,
    FetchData,
    FetchedMessage,
    FlagChanges,
    FolderInfo,
    FolderState,
    check_number,
    check_uid,
    parse_fetch_fast,
    parse_sequence_set,
    sequence_set,
)


class _Client(IMAPClient):
    """IMAPClient over our imaplib subclasses."""

    def __init__(
        self, config: ServerConfig, address: str, context: ssl.SSLContext, deadline: Deadline | None = None
    ):
        self._config, self._address, self._context, self._deadline = config, address, context, deadline
        super().__init__(
            config.host,
            port=config.port,
            ssl=config.encryption == "tls",
            ssl_context=context,
            timeout=SocketTimeout(config.connect_timeout, config.read_timeout),
        )
        self.normalise_times = False  # keep INTERNALDATE's zone: aware datetimes
        # IMAPClient sets imaplib's debug level to 5, at which imaplib formats
        # the repr of every literal it reads before handing it to a logger:
        # 150 MB for a 50 MB message, logged or not.
        self._imap.debug = 0

    def _create_IMAP4(self) -> imaplib.IMAP4:
        if self.ssl:
            return _PinnedIMAP4TLS(
                self.host, self._address, self.port, self._config, self._context, self._deadline
            )
        return _PinnedIMAP4(self.host, self._address, self.port, self._config, self._deadline)

    def set_deadline(self, deadline: Deadline | None) -> None:
        self._imap.deadline = deadline  # our _BoundedReads

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


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# --- Session ---------------------------------------------------------------------


class ImapSession:
    """One logged-in IMAP connection. Use as a context manager.

    Each read waits at most `config.read_timeout`; besides, connecting and
    logging in must be done within `config.connect_deadline` seconds, and the
    whole session within `config.session_deadline` (counted from the start):
    past either, the next read or send raises `DeadlineExceeded`."""

    def __init__(self, config: ServerConfig, username: str, password: str):
        self.config = config
        # The deadlines first: looking the host up is part of connecting.
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
            self.client = _Client(config, address, context, connect_deadline)
            if config.encryption == "starttls":
                if not self.client.has_capability("STARTTLS"):
                    raise InsecureServer(f"{config.host} does not offer STARTTLS")
                self.client.starttls(context)
            self.client.login(username, password)
            capabilities = {_text(c).upper() for c in self.client.capabilities()}
            self.qresync = False
            if "QRESYNC" in capabilities:
                enabled = {_text(c).upper() for c in self.client.enable("QRESYNC")}
                self.qresync = "QRESYNC" in enabled
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
        self.client.set_deadline(session_deadline)
        self.condstore = "CONDSTORE" in capabilities or "QRESYNC" in capabilities
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
