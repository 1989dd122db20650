from rest_framework import serializers

from .models import Folder


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


class FolderSerializer(serializers.ModelSerializer):
    display_name = serializers.SerializerMethodField(help_text="The last part of the hierarchical name.")

    class Meta:
        model = Folder
        fields = [
            "id",
            "account",
            "name",
            "display_name",
            "delimiter",
            "parent",
            "type",
            "attributes",
            "is_selectable",
            "unread_count",
            "total_count",
            "last_synced_at",
        ]
        read_only_fields = fields

    def get_display_name(self, folder: Folder) -> str:
        if folder.delimiter and folder.delimiter in folder.name:
            return folder.name.rsplit(folder.delimiter, 1)[1]
        return folder.name


class FolderFilterSerializer(serializers.Serializer):
    account = serializers.UUIDField(required=False)
