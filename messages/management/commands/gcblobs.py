import uuid

from django.core.management.base import BaseCommand, CommandError

from emailclient.core.models import Tenant
from messages.blob_gc import blob_garbage_collect
from messages.blobs import default_store


class Command(BaseCommand):
    help = (
        "Remove stored raw messages and attachments that no row refers to any more "
        "and that nothing wrote for --min-age-hours. Not while a backup copies the blobs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--min-age-hours",
            type=float,
            default=24.0,
            help="spare blobs written or reused more recently (default 24; at least 1)",
        )
        parser.add_argument("--tenant", help="one tenant, by slug (default: every tenant folder)")
        parser.add_argument("--dry-run", action="store_true", help="count, remove nothing")

    def handle(self, *args, min_age_hours: float, tenant: str | None, dry_run: bool, **options) -> None:
        tenant_ids: list[uuid.UUID] | None = None
        if tenant is not None:
            found = Tenant.objects.filter(slug=tenant).values_list("id", flat=True).first()
            if found is None:
                raise CommandError(f"No tenant {tenant!r}.")
            tenant_ids = [found]
        try:
            report = blob_garbage_collect(
                store=default_store(), min_age=min_age_hours * 3600, dry_run=dry_run, tenant_ids=tenant_ids
            )
        except ValueError as exc:  # the minimum age
            raise CommandError(f"--min-age-hours: {exc}.") from exc
        self.stdout.write(("Dry run, nothing removed: " if dry_run else "") + str(report) + ".")
