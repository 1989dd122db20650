import uuid

import pytest
from django.core.exceptions import ValidationError

from emailclient.core.models import Tenant
from emailclient.core.tests.factories import TenantFactory


@pytest.mark.django_db
def test_any_matches_the_listed_ids_as_one_array_parameter():
    tenants = TenantFactory.create_batch(3)
    wanted = [tenants[0].id, str(tenants[2].id), uuid.uuid4()]  # a string and an unknown id too

    found = Tenant.objects.filter(id__any=wanted)

    assert set(found.values_list("id", flat=True)) == {tenants[0].id, tenants[2].id}
    sql, params = found.query.sql_with_params()
    assert "= ANY(%s::uuid[])" in sql
    assert len(params) == 1
    assert not Tenant.objects.filter(id__any=[]).exists()


@pytest.mark.django_db
def test_any_refuses_what_is_not_an_id():
    with pytest.raises(ValidationError, match="is not a valid UUID"):
        list(Tenant.objects.filter(id__any=["1; DROP TABLE tenants"]))
    with pytest.raises(TypeError, match="a list of ids"):
        list(Tenant.objects.filter(id__any=str(uuid.uuid4())))
