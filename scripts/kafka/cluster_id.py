#!/usr/bin/env python3
"""Print a new KRaft cluster id for ``kafka-storage format --cluster-id``.

16 random bytes in URL-safe base64, as Kafka's own ids are. One in 32 of those starts with
"-", which the storage tool reads as an option ("argument --cluster-id: expected one
argument"), so the broker did not start and every Kafka test of that run failed. Kafka's
``Uuid.randomUuid`` draws again for the same reason; so does this.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def cluster_id(draw: Callable[[int], bytes] = os.urandom) -> str:
    """A cluster id that does not start with "-"."""
    while True:
        text = base64.urlsafe_b64encode(draw(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


if __name__ == "__main__":
    print(cluster_id())
