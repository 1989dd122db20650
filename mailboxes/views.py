from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import access_account
from emailclient.core.api import TenantAPIMixin
from emailclient.core.limits import tenant_limit
from emailclient.core.schema import TENANT_HEADER
from emailclient.core.throttling import rate_limit_hit

from .serializers import SyncRequestedSerializer, SyncStatusSerializer
from .services import sync_request
from .sync_status import IDLE, QUEUED, sync_status_get


class SyncTriggerView(TenantAPIMixin, APIView):
    """Queue a sync of the account (202), or join the one already queued or
    running, whatever its protocol (IMAP or POP3): `POST /api/sync/{id}`, its
    older name `POST /api/sync/imap/{id}`, and the seed's
    `POST .../accounts/{id}/sync`."""

    @extend_schema(parameters=[TENANT_HEADER], request=None, responses={202: SyncRequestedSerializer})
    def post(self, request, account_id, **kwargs):
        account = access_account(tenant=self.tenant, membership=self.membership, id=account_id)
        # Per account, counted once the account is the caller's (a 404 counts nothing).
        rate = tenant_limit(self.tenant, "sync_trigger_rate_limit")
        rate_limit_hit(group="sync.trigger", key=str(account.id), rate=rate)
        task_id, joined = sync_request(account=account)
        body = {
            "task_id": task_id,
            "state": sync_status_get(account.id).get("state", QUEUED),
            "joined": joined,
        }
        return Response(SyncRequestedSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class SyncStatusView(TenantAPIMixin, APIView):
    @extend_schema(parameters=[TENANT_HEADER], responses=SyncStatusSerializer)
    def get(self, request, account_id, **kwargs):
        account = access_account(tenant=self.tenant, membership=self.membership, id=account_id)
        live = sync_status_get(account.id)
        body = {
            "account_id": account.id,
            "state": live.get("state", IDLE),
            "task_id": live.get("task_id", ""),
            "progress": {
                "folder": live.get("folder", ""),
                "done": live.get("done", 0),
                "total": live.get("total", 0),
            },
            "last_sync_at": account.last_sync_at,
            "last_error": account.last_sync_error or live.get("error", ""),
            "detail": live.get("detail", ""),
        }
        return Response(SyncStatusSerializer(body).data)
