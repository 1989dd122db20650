from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from emailclient.core.backup import BackupError, restore_database


class Command(BaseCommand):
    help = "Restore a `backup` FILE into the configured database, which must be new and empty."
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)

    def handle(self, *args, file: Path, **options) -> None:
        try:
            restore_database(source=file, databases=settings.DATABASES)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Restored {file} into {settings.DATABASES['default']['NAME']}.")
