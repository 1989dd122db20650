import dataclasses
import time
from typing import TYPE_CHECKING

from django.apps import AppConfig
from django.conf import settings

if TYPE_CHECKING:
    from accounts.models import EmailAccount


def smtp_account_verify(
    *, account: "EmailAccount", incoming: bool, outgoing: bool, seconds: float
) -> dict[str, list[str]]:
    """Connect, secure and log in to `account`'s SMTP server as a send would
    (`compose.smtp.smtp_check`) within `seconds`, then QUIT. The errors by
    field of the account form; {} when the server took the login or the
    account sends nothing."""
    from accounts.services import account_credentials
    from accounts.verification import verification_deadline_message
    from compose.smtp import AuthenticationFailed, InsecureServer, SmtpError, smtp_check, smtp_config

    if not outgoing or not account.smtp_hostname:
        return {}
    ends = time.monotonic() + seconds
    config = smtp_config(account)
    config = dataclasses.replace(config, connect_deadline=min(config.connect_deadline or seconds, seconds))
    try:
        smtp_check(config, account_credentials(account=account, smtp=True), ends=ends)
    except AuthenticationFailed as exc:
        return {"smtp_password": [str(exc)]}
    except InsecureServer as exc:
        return {"smtp_encryption": [str(exc)]}
    except SmtpError as exc:
        port = isinstance(exc.__cause__, ConnectionRefusedError) or str(exc).startswith("port ")
        message = str(exc)
        if "(SMTP_CONNECTION_DEADLINE)" in message and seconds < settings.SMTP_CONNECTION_DEADLINE:
            message = verification_deadline_message(account.smtp_hostname)  # its time ran out first
        return {"smtp_port" if port else "smtp_hostname": [message]}
    return {}


class ComposeConfig(AppConfig):
    name = "compose"
    verbose_name = "Drafts and sending"

    def ready(self) -> None:
        from accounts.verification import account_verifier_register
        from messages.blob_gc import blob_references_register

        # Uploads of drafts and the frozen messages of the outbox live in the
        # blob store too: garbage collection must keep them.
        blob_references_register("email_draft_attachments", "blob_key")
        blob_references_register("email_send_queue", "raw_blob_key")
        # An account with an SMTP server is saved only once it took the login.
        account_verifier_register(smtp_account_verify)
