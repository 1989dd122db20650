"""The IMAP server settings of an account, for the sync and the write-back."""

from django.conf import settings

from accounts.models import EmailAccount
from mailboxes.imap import ServerConfig


def allowed_ports() -> frozenset[int] | None:
    """The ports a mail server may be reached on (MAIL_ALLOWED_PORTS); None: any."""
    ports = settings.MAIL_ALLOWED_PORTS
    return None if ports is None else frozenset(ports)


def server_config(account: EmailAccount) -> ServerConfig:
    return ServerConfig(
        host=account.hostname,
        port=account.port,
        encryption=account.encryption,
        allow_private=settings.MAIL_ALLOW_PRIVATE_HOSTS,
        allow_plaintext=settings.MAIL_ALLOW_PLAINTEXT,
        ca_file=settings.MAIL_TLS_CA_FILE,
        connect_timeout=settings.MAIL_CONNECT_TIMEOUT,
        read_timeout=settings.MAIL_READ_TIMEOUT,
        connect_deadline=settings.MAIL_CONNECTION_DEADLINE,
        session_deadline=settings.SYNC_DEADLINE,
        allowed_ports=allowed_ports(),
        max_literal=settings.MAIL_MAX_MESSAGE_BYTES + 1024 * 1024,
    )
