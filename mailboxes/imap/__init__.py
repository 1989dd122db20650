"""IMAP for the sync engine: connection policy and the few commands it needs.

Knows nothing of Django models or HTTP. Security rules live here:

* the host name is resolved once; loopback, private, link-local, reserved and
  cloud-metadata addresses are refused unless `allow_private` (local and test
  settings) and the connection goes to that one address (no DNS rebinding
  between check and connect);
* TLS and STARTTLS verify the certificate and the host name (against the
  name the user gave, not the address); a server that does not offer STARTTLS
  when the account asks for it is refused, never downgraded;
* every read has a timeout, and a session a total deadline to log in
  (`connect_deadline`) and to finish (`session_deadline`), however slowly the
  server trickles its bytes (`DeadlineExceeded`);
* only `allowed_ports` are reached (when given); errors name the host, never
  the address it resolved to;
* a server line longer than `max_line` or a literal larger than
  `max_literal` aborts the connection with an error.

The parts: `session` (`ImapSession` and its commands, the IMAPClient
subclass), `connection` (address checks, TLS, the socket with bounded reads,
`ServerConfig`), `responses` (FETCH parsing, number and UID checks, sequence
sets, the result types), `errors`.
"""

from mailboxes.imap.connection import ServerConfig, address_allowed, port_allowed, resolve, ssl_context
from mailboxes.imap.errors import (
    AddressNotAllowed,
    AuthenticationFailed,
    DeadlineExceeded,
    InsecureServer,
    MailServerError,
    ProtocolViolation,
)
from mailboxes.imap.responses import (
    MAX_MODSEQ,
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
from mailboxes.imap.session import ImapSession, _Client

__all__ = [
    "MAX_MODSEQ",
    "MAX_UID",
    "AddressNotAllowed",
    "AuthenticationFailed",
    "DeadlineExceeded",
    "FetchData",
    "FetchedMessage",
    "FlagChanges",
    "FolderInfo",
    "FolderState",
    "ImapSession",
    "InsecureServer",
    "MailServerError",
    "ProtocolViolation",
    "ServerConfig",
    "_Client",
    "address_allowed",
    "check_number",
    "check_uid",
    "parse_fetch_fast",
    "parse_sequence_set",
    "port_allowed",
    "resolve",
    "sequence_set",
    "ssl_context",
]
