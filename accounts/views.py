from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.response import Response

from emailclient.core.api import TenantAPIMixin
from emailclient.core.schema import TENANT_HEADER

from .models import EmailAccount
from .selectors import access_account, account_list
from .serializers import AccountInputSerializer, AccountOutputSerializer
from .services import (
    INCOMING_ENDPOINT,
    OUTGOING_ENDPOINT,
    SECRET_FIELDS,
    account_create,
    account_delete,
    account_settings_verify,
    account_update,
)


@extend_schema(parameters=[TENANT_HEADER])
class AccountViewSet(TenantAPIMixin, viewsets.GenericViewSet):
    """Email accounts of the request's tenant. Members see their own
    accounts, tenant admins every account of the tenant."""

    serializer_class = AccountOutputSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation, no request
            return EmailAccount.objects.none()
        return account_list(tenant=self.tenant, membership=self.membership)

    def _get_account(self, *, lock: bool = False):
        return access_account(tenant=self.tenant, membership=self.membership, id=self.kwargs["pk"], lock=lock)

    def list(self, request, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(AccountOutputSerializer(page, many=True).data)

    @extend_schema(request=AccountInputSerializer, responses={201: AccountOutputSerializer})
    def create(self, request, **kwargs):
        serializer = AccountInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        account = account_create(
            tenant=self.tenant,
            user=request.user,
            data=serializer.validated_data,
            ip_address=self.client_ip(),
        )
        return Response(AccountOutputSerializer(account).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, **kwargs):
        return Response(AccountOutputSerializer(self._get_account()).data)

    @extend_schema(request=AccountInputSerializer, responses=AccountOutputSerializer)
    def update(self, request, partial: bool = False, **kwargs):
        seen = self._get_account()
        serializer = AccountInputSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # The servers are tried before the row is locked: a slow one must not
        # hold the lock (a sync waits on it) for its connection deadlines.
        account_settings_verify(data=data, account=seen)
        account = self._get_account(lock=True)
        account = account_update(
            account=account,
            actor=request.user,
            data=data,
            ip_address=self.client_ip(),
            # Tried again, locked, only if the servers changed meanwhile.
            verify=_endpoint(account) != _endpoint(seen),
        )
        return Response(AccountOutputSerializer(account).data)

    @extend_schema(request=AccountInputSerializer, responses=AccountOutputSerializer)
    def partial_update(self, request, **kwargs):
        return self.update(request, partial=True, **kwargs)

    def destroy(self, request, **kwargs):
        account_delete(account=self._get_account(lock=True), actor=request.user, ip_address=self.client_ip())
        return Response(status=status.HTTP_204_NO_CONTENT)


def _endpoint(account) -> tuple:
    """Where the account's passwords go, and the passwords."""
    return tuple(
        getattr(account, field) for field in (*INCOMING_ENDPOINT, *OUTGOING_ENDPOINT, *SECRET_FIELDS.values())
    )
