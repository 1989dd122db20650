import sys
import uuid

from django.core.management.base import BaseCommand, CommandError

from accounts.models import EmailAccount
from accounts.selectors import AccountNotSyncable
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import MailServerError
from mailboxes.services import account_sync_run, sync_request
from mailboxes.sync import SyncReport
from messages.locks import SyncAlreadyRunning


class Command(BaseCommand):
    help = "Sync email accounts now (in this process), or queue their syncs with --async."

    def add_arguments(self, parser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--account", type=uuid.UUID, help="one account, by id")
        which.add_argument("--tenant", help="every enabled account of a tenant, by slug")
        which.add_argument("--all", action="store_true", help="every enabled account")
        parser.add_argument(
            "--async", dest="run_async", action="store_true", help="queue Celery tasks instead"
        )

    def handle(self, *args, account, tenant, all, run_async, **options) -> None:
        # Finding accounts across tenants is an operator's read: admin alias.
        matching = EmailAccount.objects.using("admin").select_related("tenant").filter(is_deleted=False)
        if account:
            matching = matching.filter(id=account)
        else:
            matching = matching.filter(is_enabled=True)
            if tenant:
                matching = matching.filter(tenant__slug=tenant)
        accounts = list(matching.order_by("tenant__slug", "email_address"))
        if not accounts:
            raise CommandError("No matching account.")
        if run_async:
            for item in accounts:
                with tenant_scope(item.tenant_id):
                    runtime = EmailAccount.objects.get(id=item.id)
                task_id, joined = sync_request(account=runtime)
                self.stdout.write(f"{item.email_address}: {'joined' if joined else 'queued'} {task_id}")
            return
        total, failed = SyncReport(), 0
        for item in accounts:
            try:
                report = self.sync_one(item)
            except (MailServerError, SyncAlreadyRunning, AccountNotSyncable) as exc:
                failed += 1
                self.stderr.write(f"{item.email_address}: failed: {exc or type(exc).__name__}")
                continue
            for name in ("folders", "new", "updated", "expunged", "quarantined"):
                setattr(total, name, getattr(total, name) + getattr(report, name))
            self.stdout.write(f"{item.email_address}: {report.summary()}")
        self.stdout.write(
            f"Synced {len(accounts) - failed} of {len(accounts)} account(s): {total.summary()}."
        )
        if failed:
            raise CommandError(f"{failed} account(s) failed.")

    def sync_one(self, item: EmailAccount) -> SyncReport:
        interactive = sys.stdout.isatty()

        def progress(folder: str, done: int, total: int) -> None:
            if interactive and total:
                width = 30
                filled = width * done // total
                bar = "#" * filled + "-" * (width - filled)
                self.stdout.write(f"\r  {folder[:30]:<30} [{bar}] {done}/{total}", ending="")
                self.stdout.flush()

        # A MailServerError is recorded on the account, then raised; on
        # SyncAlreadyRunning the account's state is the other worker's.
        try:
            return account_sync_run(
                tenant_id=item.tenant_id, account_id=item.id, progress=progress, index_inline=True
            )
        finally:
            if interactive:
                self.stdout.write("")
