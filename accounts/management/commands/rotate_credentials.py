from django.core.management.base import BaseCommand, CommandError

from accounts.services import account_credentials_rotate
from emailclient.core.crypto import CredentialError


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored mail credential under the first key of "
        "CREDENTIAL_ENCRYPTION_KEYS. Put the new key first, run this, then drop the old key."
    )

    def handle(self, *args, **options) -> None:
        try:
            count = account_credentials_rotate()
        except CredentialError as exc:
            raise CommandError(f"{exc}; nothing was changed.") from exc
        self.stdout.write(f"Re-encrypted the credentials of {count} account(s).")
