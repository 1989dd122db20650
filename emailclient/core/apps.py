from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "emailclient.core"
    label = "core"
    verbose_name = "Tenants and audit"
