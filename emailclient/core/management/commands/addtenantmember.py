from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from emailclient.core.models import Tenant, TenantMembership
from emailclient.core.services import tenant_member_add


class Command(BaseCommand):
    help = "Make a user a member of a tenant (or change the member's role)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("username")
        parser.add_argument("--role", choices=TenantMembership.Role.values, default="member")
        parser.add_argument("--create", action="store_true", help="Create the user if missing.")
        parser.add_argument("--password", help="Password for a user made with --create.")

    def handle(self, *args, slug, username, role, create, password, **options) -> None:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"Unknown tenant {slug!r}. Create it with `createtenant {slug}`.")
        User = get_user_model()
        with transaction.atomic():
            user = User.objects.filter(username=username).first()
            if user is None:
                if not create:
                    raise CommandError(f"Unknown user {username!r}. Pass --create --password P to create it.")
                if not password:
                    raise CommandError("--create needs --password.")
                user = User.objects.create_user(username=username, password=password)
                self.stdout.write(f"Created user {username}.")
            elif password:
                raise CommandError("--password applies only to a user made with --create.")
            membership = tenant_member_add(tenant=tenant, user=user, role=role)
        self.stdout.write(f"{username} is {membership.role} of {tenant.slug}.")
