from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.migrations.loader import MigrationLoader

from emailclient.core.backup import (
    BackupError,
    archive_encrypted,
    archive_restore,
    encryption_key_read,
    restore_database,
)


class Command(BaseCommand):
    help = (
        "Restore a `backup` ARCHIVE into the configured database, which must be new and empty "
        "(`setupdb`), and the blob folder, which must be empty. The archive is checked against its "
        "manifest before anything is written; tenant isolation and row counts after."
    )
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--encrypt-key-file",
            type=Path,
            default=None,
            help="the archive's key (default: BACKUP_ENCRYPTION_KEY_FILE, else BACKUP_ENCRYPTION_KEY)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="restore an archive from a newer version (migrations this code does not know)",
        )

    def handle(self, *args, file: Path, encrypt_key_file: Path | None, force: bool, **options) -> None:
        try:
            with open(file, "rb") as handle:
                head = handle.read(64)
            plain_dump = head.startswith(b"PGDMP")
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from exc
        loader = MigrationLoader(None, ignore_no_migrations=True)
        known = {f"{app}.{name}" for app, name in loader.disk_migrations}
        try:
            if plain_dump:
                # A dump written by `backup` before archives: the database only.
                restore_database(source=file, databases=settings.DATABASES)
                self.stdout.write(
                    f"Restored the database dump {file} into {settings.DATABASES['default']['NAME']} "
                    "(no blobs in it: copy the blob folder back separately)."
                )
                return
            # The settings' key is the default for encrypted archives only; a key
            # given for a plain archive is refused (the wrong file?).
            key = (
                encryption_key_read(key_file=encrypt_key_file or settings.BACKUP_ENCRYPTION_KEY_FILE)
                if encrypt_key_file or archive_encrypted(head)
                else None
            )
            result = archive_restore(
                source=file,
                databases=settings.DATABASES,
                blob_root=settings.BLOB_STORAGE_DIR,
                key=key,
                known_migrations=known,
                force=force,
            )
        except OSError as exc:
            # Disk full, permissions on the blob folder, ...: the path that failed.
            raise CommandError(f"restore failed: {exc.filename or file}: {exc.strerror}") from exc
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        manifest = result.manifest
        self.stdout.write(
            f"Restored {file} (made {manifest['created']}) into {settings.DATABASES['default']['NAME']} and "
            f"{settings.BLOB_STORAGE_DIR}: {len(manifest['tenants'])} tenants, {result.blobs} blobs, "
            f"in {result.seconds:.1f} s."
        )
        archived = set(manifest["migrations"])
        if archived - known:  # restored with --force
            self.stderr.write(
                f"The archive comes from a newer version: {len(archived - known)} migrations unknown to this "
                f"code (e.g. {sorted(archived - known)[0]}). Run that version or a newer one."
            )
        elif known - archived:
            self.stdout.write(
                f"This version has {len(known - archived)} migrations the archive has not: "
                "run `migrate --database owner` before starting the service."
            )
