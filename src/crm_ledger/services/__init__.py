"""The use cases every entrypoint calls (CLI, console): plain values and frozen dataclasses in
and out, errors worded for any caller. ``bootstrap.build(settings)`` makes one ``Services``
per process (the CLI one per command, a server one for its life); parts open on first use and
``close()`` releases them. Modules load on first use too (see ``container``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crm_ledger.services.container import Charts, ReadModelStore, Services, Wiring


def __getattr__(name: str) -> object:
    if name in ("Charts", "ReadModelStore", "Services", "Wiring"):
        return getattr(importlib.import_module("crm_ledger.services.container"), name)
    raise AttributeError(name)


__all__ = ["Charts", "ReadModelStore", "Services", "Wiring"]
