from django.apps import AppConfig


class ComposeConfig(AppConfig):
    name = "compose"
    verbose_name = "Drafts and sending"

    def ready(self) -> None:
        from messages.blob_gc import blob_references_register

        # Uploads of drafts and the frozen messages of the outbox live in the
        # blob store too: garbage collection must keep them.
        blob_references_register("email_draft_attachments", "blob_key")
        blob_references_register("email_send_queue", "raw_blob_key")
