import uuid

from django.core.management.base import BaseCommand, CommandError

from accounts.models import EmailAccount
from emailclient.core.models import Tenant
from messages.reparse import BATCH_SIZE, ReparseReport, messages_reparse


class Command(BaseCommand):
    help = (
        "Re-read the stored raw source of every message (not deleted) and update what the "
        "current parser derives from it: message_id, message_id_synthetic, in_reply_to, "
        "references (re-threading the messages whose ids changed), text_body and snippet "
        "(re-indexing those whose text changed). Nothing else changes (subjects, addresses, "
        "html_body, attachments, flags, folders) and no mail server is asked. Run it after an "
        "upgrade whose parser changes those fields; running it again changes nothing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", help="one tenant, by slug (default: every tenant)")
        parser.add_argument("--account", type=uuid.UUID, help="one account, by id")
        parser.add_argument("--dry-run", action="store_true", help="count what would change, change nothing")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH_SIZE,
            help=f"messages per transaction (default {BATCH_SIZE})",
        )

    def handle(
        self, *args, tenant: str | None, account: uuid.UUID | None, dry_run: bool, batch_size: int, **options
    ) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size: at least 1.")
        rows = Tenant.objects.order_by("slug")
        if tenant is not None:
            rows = rows.filter(slug=tenant)
        if account is not None:
            # Finding an account across tenants is an operator's read: admin alias.
            owner = EmailAccount.objects.using("admin").filter(id=account).values_list("tenant_id", flat=True)
            rows = rows.filter(id__in=list(owner))
        tenants = list(rows)
        if not tenants:
            if account is not None:
                raise CommandError(f"No account {account}" + (f" in tenant {tenant!r}." if tenant else "."))
            raise CommandError(f"No tenant {tenant!r}." if tenant else "No tenants.")
        total = ReparseReport(tenant="total", dry_run=dry_run)
        for item in tenants:
            report = messages_reparse(tenant=item, account_id=account, dry_run=dry_run, batch_size=batch_size)
            self.stdout.write(str(report))
            for name, value in report.as_dict().items():
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(total, name, getattr(total, name) + value)
        if len(tenants) > 1:
            self.stdout.write(str(total))
        if dry_run:
            self.stdout.write("Dry run: nothing was changed.")
