from django.conf import settings
from django.core.management.base import BaseCommand

from emailclient.core.dbsetup import setup_database


class Command(BaseCommand):
    help = (
        "Create the database and its owner, runtime and admin roles (idempotent). "
        "Connects as DATABASE_SUPERUSER_URL. Run `migrate --database owner` next."
    )
    requires_system_checks = []

    def handle(self, *args, **options) -> None:
        setup_database(
            superuser_url=settings.DATABASE_SUPERUSER_URL,
            databases=settings.DATABASES,
            log=lambda line: self.stdout.write(line),
        )
