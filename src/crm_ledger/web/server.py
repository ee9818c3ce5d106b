"""Running the console: one process, one ``Services`` object, uvicorn serving the app."""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn

from crm_ledger.web.app import create_app

if TYPE_CHECKING:
    from crm_ledger.adapters.users import UserFile
    from crm_ledger.services import Services


def serve(services: Services, users: UserFile, secret: bytes, host: str, port: int) -> None:
    """Serve the console until interrupted (the services are closed by the caller)."""
    app = create_app(services, users, secret)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
