from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from imapclient import IMAPClient

from accounts.models import EmailAccount
from accounts.services import account_create, account_update
from emailclient.core.models import Tenant
from emailclient.core.tenancy import tenant_scope
from mailboxes.services import sync_request

# Folders of the demo mailbox and the corpus folders that fill them.
DEMO_FOLDERS = {
    "INBOX": ("notmuch", "lkml"),
    "Archive": ("notmuch", "default"),
    "Lists": ("notmuch", "threading"),
    "Attachments": ("notmuch", "attachment"),
}
MAX_PER_FOLDER = 60


class Command(BaseCommand):
    help = (
        "Development only: fill the local Dovecot's `demo` mailbox with corpus mail, "
        "give the demo user an account for it (sending through the dev submission "
        "server, deploy/devmail/devsubmission.py), and queue its first sync."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--imap-port", type=int, required=True)
        parser.add_argument("--smtp-port", type=int, default=10587, help="the dev submission server's port")
        parser.add_argument("--corpus", type=Path, default=settings.BASE_DIR.parent / "shared" / "corpus")

    def handle(self, *args, imap_port: int, smtp_port: int, corpus: Path, **options) -> None:
        password = getattr(settings, "DEMO_PASSWORD", None)
        if not settings.DEBUG or password is None:
            raise CommandError("seeddemomail runs only with the local (DEBUG) settings.")
        tenant = Tenant.objects.filter(slug="demo").first()
        user = get_user_model().objects.filter(username="demo").first()
        if tenant is None or user is None:
            raise CommandError("Run `seeddemo` first.")
        self.fill_mailbox(imap_port, password, corpus)
        with tenant_scope(tenant.id):
            account = EmailAccount.objects.filter(
                tenant=tenant, user=user, email_address="demo@localhost"
            ).first()
        # Sending: the dev submission server on loopback (STARTTLS with the
        # devmail certificate, AUTH as the devmail user `demo`).
        smtp = {
            "smtp_hostname": "127.0.0.1",
            "smtp_port": smtp_port,
            "smtp_encryption": "starttls",
            "smtp_username": "demo",
            "smtp_password": password,
        }
        if account is not None:
            # The demo's servers and secrets are this run's: the ports may have
            # moved and a new .env means a new credential key.
            # Not logged in to first (ACCOUNT_VERIFY_ON_SAVE): the servers are
            # this run's own, and the submission server may still be starting.
            account = account_update(
                account=account,
                actor=None,
                data={"port": imap_port, "password": password, **smtp},
                verify=False,
            )
        else:
            account = account_create(
                tenant=tenant,
                user=user,
                data={
                    "account_name": "Demo mailbox",
                    "email_address": "demo@localhost",
                    "protocol": "imap",
                    "hostname": "127.0.0.1",
                    "port": imap_port,
                    "encryption": "starttls",
                    "username": "demo",
                    "password": password,
                    "sync_interval": 300,
                    **smtp,
                },
                verify=False,
            )
        task_id, joined = sync_request(account=account)
        self.stdout.write(
            f"Demo account {account.id} (demo@localhost on 127.0.0.1:{imap_port}, "
            f"sending through 127.0.0.1:{smtp_port}): "
            f"sync {'running' if joined else 'queued'} as task {task_id}."
        )

    def fill_mailbox(self, port: int, password: str, corpus: Path) -> None:
        client = IMAPClient("127.0.0.1", port=port, ssl=False)
        client.login("demo", password)
        try:
            if client.select_folder("INBOX")[b"EXISTS"]:
                return  # filled on an earlier run
            if not corpus.is_dir():
                self.stdout.write(f"No corpus at {corpus}: the demo mailbox stays empty.")
                return
            count = 0
            for folder, parts in DEMO_FOLDERS.items():
                if not client.folder_exists(folder):
                    client.create_folder(folder)
                files = sorted(p for p in corpus.joinpath(*parts).rglob("*") if p.is_file())[:MAX_PER_FOLDER]
                for i, path in enumerate(files):
                    client.append(folder, path.read_bytes(), flags=[b"\\Seen"] if i % 2 else [])
                    count += 1
            self.stdout.write(f"Filled the demo mailbox with {count} messages from {corpus}.")
        finally:
            client.logout()
