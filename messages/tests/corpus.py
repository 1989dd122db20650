"""The shared test mail corpus (../shared/corpus, beside the project)."""

import os
from pathlib import Path

from django.conf import settings

CORPUS_DIR = Path(os.environ.get("MAIL_CORPUS_DIR", settings.BASE_DIR.parent / "shared" / "corpus"))
_NOT_MAIL_NAMES = ("README", "COPYING", "LICENSE")


def corpus_files(*parts: str) -> list[Path]:
    root = CORPUS_DIR.joinpath(*parts)
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(_NOT_MAIL_NAMES) and "LICENSES" not in path.parts
    )
