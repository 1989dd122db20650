from django.core.management.base import BaseCommand, CommandError

from emailclient.core.models import Tenant
from mailboxes.blob_repair import blobs_repair
from messages.blobs import default_store


class Command(BaseCommand):
    help = (
        "Check every stored raw message and attachment against its SHA-256 and fetch the "
        "damaged or missing ones again from the mail server."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", help="one tenant, by slug (default: every tenant)")
        parser.add_argument("--dry-run", action="store_true", help="find them, fetch nothing")

    def handle(self, *args, tenant: str | None, dry_run: bool, **options) -> None:
        tenants = Tenant.objects.order_by("slug")
        if tenant is not None:
            tenants = tenants.filter(slug=tenant)
        found = list(tenants.values_list("id", "slug"))
        if not found:
            raise CommandError(f"No tenant {tenant!r}." if tenant else "No tenant.")
        store = default_store()
        unrepaired = 0
        for tenant_id, slug in found:
            report = blobs_repair(
                store=store,
                tenant_id=tenant_id,
                dry_run=dry_run,
                log=lambda line: self.stdout.write(f"  {line}"),
            )
            self.stdout.write(f"{slug}: {report}.")
            for key, why in report.unrepairable.items():
                self.stderr.write(f"{slug}: blob {key} not repaired: {why}")
            unrepaired += len(report.unrepairable)
        if unrepaired:
            raise CommandError(f"{unrepaired} blob(s) could not be repaired.")
