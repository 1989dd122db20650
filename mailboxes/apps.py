import dataclasses
from typing import TYPE_CHECKING

from django.apps import AppConfig
from django.conf import settings

if TYPE_CHECKING:
    from accounts.models import EmailAccount


def imap_account_verify(
    *, account: "EmailAccount", incoming: bool, outgoing: bool, seconds: float
) -> dict[str, list[str]]:
    """Log in to `account`'s IMAP or POP3 server as the sync would (same
    address and port policy, TLS or STARTTLS/STLS, MAIL_CONNECTION_DEADLINE),
    then LOGOUT or close, all within `seconds`. The errors by field of the
    account form; {} when the server took the login."""
    from accounts.services import account_credentials
    from accounts.verification import verification_deadline_message
    from mailboxes.imap import ImapSession
    from mailboxes.imap.errors import (
        AddressNotAllowed,
        AuthenticationFailed,
        DeadlineExceeded,
        InsecureServer,
        MailServerError,
    )
    from mailboxes.pop3 import Pop3Session
    from mailboxes.sync.config import server_config

    if not incoming or account.protocol not in ("imap", "pop3"):
        return {}
    config = server_config(account)
    # The login within the connection deadline, the whole session (LOGOUT
    # too) within what the verification has left.
    connect = min(config.connect_deadline or seconds, seconds)
    config = dataclasses.replace(
        config,
        connect_deadline=connect,
        session_deadline=seconds,
        read_timeout=min(config.read_timeout, seconds),
    )
    credentials = account_credentials(account=account)
    session = ImapSession if account.protocol == "imap" else Pop3Session
    try:
        with session(config, credentials.username, credentials.password):
            pass  # a POP3 session closes without QUIT: nothing on the server changes
    except AuthenticationFailed as exc:
        return {"password": [f"{account.hostname}: {exc}"]}
    except InsecureServer as exc:
        return {"encryption": [str(exc)]}
    except AddressNotAllowed as exc:
        return {"port" if str(exc).startswith("port ") else "hostname": [str(exc)]}
    except DeadlineExceeded as exc:
        if seconds < settings.MAIL_CONNECTION_DEADLINE:  # the verification's time ran out first
            return {"hostname": [verification_deadline_message(account.hostname)]}
        return {"hostname": [str(exc)]}
    except MailServerError as exc:
        refused = isinstance(exc.__cause__, ConnectionRefusedError)
        return {"port" if refused else "hostname": [str(exc)]}
    return {}


class MailboxesConfig(AppConfig):
    name = "mailboxes"
    verbose_name = "Mailboxes (folders and sync state)"

    def ready(self) -> None:
        from accounts.verification import account_verifier_register

        # An account is saved only once its IMAP or POP3 server took its login.
        account_verifier_register(imap_account_verify)
