"""The ``crm-ledger`` command line: parse, call bootstrap and the use cases, print. One module
per command group; importing this package registers every command on ``cli``."""

from crm_ledger.cli import (  # noqa: F401  (each module registers its commands)
    analysis,
    audit,
    clv,
    console,
    customers,
    db,
    exports,
    kafka,
    ledger,
    schemas,
)
from crm_ledger.cli.base import cli, main

__all__ = ["cli", "main"]
