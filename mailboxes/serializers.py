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
    state = serializers.ChoiceField(choices=["idle", "queued", "running", "failed"])
    task_id = serializers.CharField(allow_blank=True)
    progress = SyncProgressSerializer()
    last_sync_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
