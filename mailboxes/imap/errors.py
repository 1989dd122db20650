"""The IMAP client's errors: what went wrong, and whether a retry can help."""


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


class DeadlineExceeded(MailServerError):
    """The server took longer than the connection's or the sync's total
    deadline (a tarpit that trickles bytes, or an overloaded server)."""
