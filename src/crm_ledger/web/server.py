"""Running the console: one process, one ``Services`` object, uvicorn serving the app."""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn

from crm_ledger.web.app import create_app

if TYPE_CHECKING:
    from crm_ledger.adapters.avro import SchemaRegistry
    from crm_ledger.adapters.users import UserFile
    from crm_ledger.services import Services


def serve(
    services: Services,
    users: UserFile,
    secret: bytes,
    address: tuple[str, int],
    registry: SchemaRegistry | None = None,
) -> None:
    """Serve the console (and, with ``registry``, the Schema Registry API) on ``address``
    until interrupted (the services are closed by the caller)."""
    host, port = address
    app = create_app(services, users, secret, registry)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
