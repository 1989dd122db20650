from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.migrations.loader import MigrationLoader

from emailclient.core.backup import BackupError, archive_restore, encryption_key_read, restore_database


class Command(BaseCommand):
    help = (
        "Restore a `backup` ARCHIVE into the configured database, which must be new and empty "
        "(`setupdb`), and the blob folder, which must be empty. The archive is checked against its "
        "manifest before anything is written; tenant isolation and row counts after."
    )
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--encrypt-key-file", type=Path, default=None)

    def handle(self, *args, file: Path, encrypt_key_file: Path | None, **options) -> None:
        try:
            with open(file, "rb") as handle:
                plain_dump = handle.read(5) == b"PGDMP"
            if plain_dump:
                # A dump written by `backup` before archives: the database only.
                restore_database(source=file, databases=settings.DATABASES)
                self.stdout.write(
                    f"Restored the database dump {file} into {settings.DATABASES['default']['NAME']} "
                    "(no blobs in it: copy the blob folder back separately)."
                )
                return
            key = encryption_key_read(key_file=encrypt_key_file)
            result = archive_restore(
                source=file, databases=settings.DATABASES, blob_root=settings.BLOB_STORAGE_DIR, key=key
            )
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from exc
        except BackupError as exc:
            raise CommandError(str(exc)) from exc
        manifest = result.manifest
        self.stdout.write(
            f"Restored {file} (made {manifest['created']}) into {settings.DATABASES['default']['NAME']} and "
            f"{settings.BLOB_STORAGE_DIR}: {len(manifest['tenants'])} tenants, {result.blobs} blobs, "
            f"in {result.seconds:.1f} s."
        )
        loader = MigrationLoader(None, ignore_no_migrations=True)
        known = {f"{app}.{name}" for app, name in loader.disk_migrations}
        archived = set(manifest["migrations"])
        if archived - known:
            self.stderr.write(
                f"The archive comes from a newer version: {len(archived - known)} migrations unknown to this "
                f"code (e.g. {sorted(archived - known)[0]}). Run that version or a newer one."
            )
        elif known - archived:
            self.stdout.write(
                f"This version has {len(known - archived)} migrations the archive has not: "
                "run `migrate --database owner` before starting the service."
            )
