from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_slug

from emailclient.core.exceptions import ApplicationError
from emailclient.core.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")

    def handle(self, *args, slug: str, name: str, **options) -> None:
        try:
            validate_slug(slug)
        except ValidationError as exc:
            raise CommandError(f"Invalid slug {slug!r}: letters, digits, - and _ only.") from exc
        try:
            tenant = tenant_create(slug=slug, name=name)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created tenant {tenant.slug} ({tenant.id}).")
