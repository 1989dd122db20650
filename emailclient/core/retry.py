"""Backoff for Celery retries."""

import random


def backoff_countdown(retries: int, *, base: float = 30, ceiling: float = 3600) -> float:
    """Exponential backoff with jitter: 30 s, 60 s, 120 s ... up to an hour,
    each between half and one and a half times that."""
    return min(ceiling, base * 2**retries) * random.uniform(0.5, 1.5)  # noqa: S311 - not cryptographic
