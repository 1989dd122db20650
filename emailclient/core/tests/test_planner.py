import pytest
from django.db import connection, transaction

from emailclient.core.planner import planner_settings


def show(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_switches_hold_inside_the_block_and_come_back_after():
    with transaction.atomic():
        with planner_settings(enable_bitmapscan=False, enable_sort=False):
            assert (show("enable_bitmapscan"), show("enable_sort")) == ("off", "off")
            with planner_settings(enable_sort=True):
                assert (show("enable_bitmapscan"), show("enable_sort")) == ("off", "on")
            assert show("enable_sort") == "off"
        assert (show("enable_bitmapscan"), show("enable_sort")) == ("on", "on")


def test_an_error_in_the_block_leaves_nothing_set_on_the_connection(committed_db):
    with pytest.raises(ZeroDivisionError), transaction.atomic(), planner_settings(enable_bitmapscan=False):
        1 / 0  # noqa: B018
    assert show("enable_bitmapscan") == "on"


def test_outside_a_transaction_or_beyond_the_planner_it_refuses(committed_db):
    with pytest.raises(RuntimeError, match="needs a transaction"), planner_settings(enable_bitmapscan=False):
        pass
    with transaction.atomic(), pytest.raises(ValueError, match="work_mem"), planner_settings(work_mem=True):
        pass
