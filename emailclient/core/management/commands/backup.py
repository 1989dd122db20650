from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from emailclient.core.backup import BackupError, archive_create, encryption_key_read


class Command(BaseCommand):
    help = (
        "Write one archive (mode 0600) of the whole service to FILE: the database (every tenant), "
        "the blob store and a manifest with checksums. Encrypted with the key in --encrypt-key-file, "
        "or in BACKUP_ENCRYPTION_KEY, when given."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--encrypt-key-file", type=Path, default=None)

    def handle(self, *args, file: Path, encrypt_key_file: Path | None, **options) -> None:
        try:
            key = encryption_key_read(key_file=encrypt_key_file)
            result = archive_create(
                output=file, databases=settings.DATABASES, blob_root=settings.BLOB_STORAGE_DIR, key=key
            )
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        tenants = len(result.manifest["tenants"])
        self.stdout.write(
            f"Wrote {file} ({result.size} bytes{', encrypted' if key else ''}): {tenants} tenants, "
            f"{result.blobs} blobs, in {result.seconds:.1f} s."
        )
