from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from emailclient.core.backup import BackupError, backup_database


class Command(BaseCommand):
    help = "Dump the whole database (every tenant) to FILE in pg_dump's custom format."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)

    def handle(self, *args, file: Path, **options) -> None:
        try:
            backup_database(output=file, databases=settings.DATABASES)
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Wrote {file} ({file.stat().st_size} bytes).")
