from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from emailclient.core.backup import BackupError, archive_create, encryption_key_read


class Command(BaseCommand):
    help = (
        "Write one archive (mode 0600) of the whole service to FILE: the database (every tenant), "
        "the blob store and a manifest with checksums. Encrypted with the key in --encrypt-key-file, "
        "or BACKUP_ENCRYPTION_KEY_FILE, or in BACKUP_ENCRYPTION_KEY, when given (--no-encrypt: never)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--encrypt-key-file",
            type=Path,
            default=None,
            help="the key (default: BACKUP_ENCRYPTION_KEY_FILE, else BACKUP_ENCRYPTION_KEY)",
        )
        parser.add_argument("--no-encrypt", action="store_true", help="write the archive unencrypted")

    def handle(self, *args, file: Path, encrypt_key_file: Path | None, no_encrypt: bool, **options) -> None:
        if no_encrypt and encrypt_key_file:
            raise CommandError("--no-encrypt and --encrypt-key-file: choose one")
        try:
            key = (
                None
                if no_encrypt
                else encryption_key_read(key_file=encrypt_key_file or settings.BACKUP_ENCRYPTION_KEY_FILE)
            )
            result = archive_create(
                output=file, databases=settings.DATABASES, blob_root=settings.BLOB_STORAGE_DIR, key=key
            )
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:  # disk full, a blob folder it cannot read, ...
            raise CommandError(f"backup failed: {exc.filename or file}: {exc.strerror}") from exc
        tenants = len(result.manifest["tenants"])
        self.stdout.write(
            f"Wrote {file} ({result.size} bytes{', encrypted' if key else ''}): {tenants} tenants, "
            f"{result.blobs} blobs, in {result.seconds:.1f} s."
        )
