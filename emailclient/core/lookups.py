"""Lookups the ORM lacks, registered when the core app is ready."""

from django.db.models import Lookup, UUIDField


@UUIDField.register_lookup
class AnyOf(Lookup):
    """`id__any=ids`: `id = ANY(%s)`, the ids sent as one array parameter.
    `id__in` compiles one parameter per id: 25-90 ms for 10,000 ids, on
    every compilation of the query, against about 2."""

    lookup_name = "any"
    prepare_rhs = False

    def get_db_prep_lookup(self, value, connection):
        if isinstance(value, str | bytes):  # would be taken character by character
            raise TypeError("__any takes a list of ids, not one")
        field = self.lhs.output_field
        return "%s", [[field.get_db_prep_value(item, connection) for item in value]]

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} = ANY({rhs}::uuid[])", (*lhs_params, *rhs_params)
