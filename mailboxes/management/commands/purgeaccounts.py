from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailboxes.purge import accounts_purge_deleted
from messages.blobs import default_store


class Command(BaseCommand):
    help = (
        "Remove for good the accounts soft-deleted more than --days ago (default "
        "ACCOUNT_PURGE_RETENTION_DAYS): their mail, credentials and the blobs no other row needs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="retention in days (default: ACCOUNT_PURGE_RETENTION_DAYS, 30 unless set)",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, remove nothing")

    def handle(self, *args, days: int | None, dry_run: bool, **options) -> None:
        days = settings.ACCOUNT_PURGE_RETENTION_DAYS if days is None else days
        if days < 0:
            raise CommandError("--days: at least 0.")
        report = accounts_purge_deleted(
            store=default_store(),
            retention=timedelta(days=days),
            dry_run=dry_run,
            log=lambda line: self.stdout.write(f"  {line}"),
        )
        self.stdout.write(("Dry run, nothing removed: " if dry_run else "") + str(report) + ".")
