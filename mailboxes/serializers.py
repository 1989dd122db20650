from rest_framework import serializers


class SyncRequestedSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    state = serializers.CharField()
    joined = serializers.BooleanField(help_text="True when a sync was already queued or running.")


class SyncProgressSerializer(serializers.Serializer):
    folder = serializers.CharField()
    done = serializers.IntegerField()
    total = serializers.IntegerField()


class SyncStatusSerializer(serializers.Serializer):
    account_id = serializers.UUIDField()
    state = serializers.ChoiceField(choices=["idle", "queued", "waiting", "running", "failed", "over_quota"])
    task_id = serializers.CharField(allow_blank=True)
    progress = SyncProgressSerializer()
    last_sync_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    detail = serializers.CharField(
        allow_blank=True,
        help_text="Why a sync waits (its tenant's or its server's concurrent syncs are all running), "
        "why new mail was not stored (over quota), why the account is not synced, or what the last "
        "sync found of note (a POP3 server without UIDL: messages told apart by Message-ID and a "
        "hash of their header).",
    )
