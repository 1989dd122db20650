from django.apps import AppConfig


class MailConfig(AppConfig):
    # django.contrib.messages owns the label "messages".
    name = "messages"
    label = "mail"
    verbose_name = "Messages"
