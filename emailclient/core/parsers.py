from rest_framework import exceptions, parsers


class JSONParser(parsers.JSONParser):
    """DRF's, but a body nested too deeply for Python's decoder (a thousand
    unclosed `{"a":`) is a parse error, not a RecursionError and a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
