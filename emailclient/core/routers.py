class SameDatabaseRouter:
    """The `default`, `owner` and `admin` aliases are three roles on one
    database, so objects read through one may relate to objects of another
    (an admin form pairs a tenant read as operator with a user read normally)."""

    def allow_relation(self, obj1, obj2, **hints) -> bool:
        return True
