"""Our schemas for any Kafka client: the Confluent Schema Registry REST API, read-only, over
``schemas/registry.json``.

A Java, Go or librdkafka producer configured with ``schema.registry.url`` pointing here (and
the record-name subject strategy, as one topic carries every event type) looks up the id of
its schema and frames each message with it, the ids the ledger decodes. Registering a new
version stays a reviewed change to the repository (`crm-ledger schemas register`), so a
register call is answered only when the schema is already registered, and otherwise refused
with the registry's own error for a read-only subject. Schemas hold no personal data: the API
is open to any client that can reach the console, like a registry without authentication.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from crm_ledger.adapters.avro import canonical_form, compatibility_problems
from crm_ledger.errors import SchemaError, UndecodableMessage
from crm_ledger.web.roles import Access

if TYPE_CHECKING:
    from starlette.requests import Request

    from crm_ledger.adapters.avro import SchemaRegistry, SchemaVersion
    from crm_ledger.adapters.users import User

MEDIA = "application/vnd.schemaregistry.v1+json"
PUBLIC: frozenset[str] = frozenset()
# The registry's error codes (Confluent Schema Registry API reference).
SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND = 40401, 40402, 40403
INVALID_SCHEMA, INVALID_VERSION, NOT_PERMITTED = 42201, 42202, 42205
COMPATIBILITY = "BACKWARD"
#: The largest request body the API reads (our largest schema is a few kilobytes).
MAX_BODY = 1024 * 1024


class RegistryError(Exception):
    """An error the registry API answers with its own body: error_code and message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def routes(registry: SchemaRegistry) -> list[tuple[Access, Any]]:
    """The registry routes: public, JSON, no CSRF (programs call them, without a session)."""
    api = _Registry(registry)

    def get(path: str, handler: Any) -> tuple[Access, Any]:
        return Access(path, ("GET",), PUBLIC, True, csrf=False), _answering(handler)

    def post(path: str, handler: Any) -> tuple[Access, Any]:
        return Access(path, ("POST",), PUBLIC, True, csrf=False), _answering(handler)

    def put(path: str, handler: Any) -> tuple[Access, Any]:
        return Access(path, ("PUT",), PUBLIC, True, csrf=False), _answering(handler)

    versions = "/subjects/{subject}/versions/{version}"
    return [
        get("/schemas/types", api.types),
        get("/schemas/ids/{schema_id}", api.by_id),
        get("/schemas/ids/{schema_id}/schema", api.raw_by_id),
        get("/schemas/ids/{schema_id}/subjects", api.subjects_of_id),
        get("/schemas/ids/{schema_id}/versions", api.versions_of_id),
        get("/subjects", api.subjects),
        get("/subjects/{subject}/versions", api.versions),
        get(versions, api.version),
        get(versions + "/schema", api.raw_version),
        post("/subjects/{subject}", api.lookup),
        post("/subjects/{subject}/versions", api.register),
        post("/compatibility/subjects/{subject}/versions/{version}", api.compatible),
        post("/compatibility/subjects/{subject}/versions", api.compatible_with_all),
        get("/config", api.config),
        get("/config/{subject}", api.config),
        get("/mode", api.mode),
        get("/mode/{subject}", api.mode),
        put("/mode", api.refuse_change),
        put("/mode/{subject}", api.refuse_change),
        put("/config", api.refuse_change),
        put("/config/{subject}", api.refuse_change),
    ]


def _answering(handler: Any) -> Any:
    async def answer(request: Request, user: User | None) -> Response:
        try:
            body = await handler(request)
        except RegistryError as e:
            body = {"error_code": e.code, "message": e.message}
            return JSONResponse(body, status_code=e.status, media_type=MEDIA)
        if isinstance(body, Response):
            return body
        return JSONResponse(body, media_type=MEDIA)

    return answer


async def _body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY bytes (this API needs no sign-in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema: larger than {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RegistryError(
                422, INVALID_SCHEMA, f"Invalid schema: larger than {MAX_BODY} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class _Registry:
    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry

    # Look-ups by id.

    async def types(self, request: Request) -> Any:
        return ["AVRO"]

    def _id(self, request: Request) -> SchemaVersion:
        raw = request.path_params["schema_id"]
        try:
            return self.registry.by_id(int(raw) if raw.isdigit() else -1)
        except UndecodableMessage:
            raise RegistryError(404, SCHEMA_NOT_FOUND, f"Schema {raw} not found") from None

    async def by_id(self, request: Request) -> Any:
        return {"schema": json.dumps(self._id(request).schema)}

    async def raw_by_id(self, request: Request) -> Any:
        return self._id(request).schema

    async def subjects_of_id(self, request: Request) -> Any:
        return [self._id(request).full_name]

    async def versions_of_id(self, request: Request) -> Any:
        found = self._id(request)
        return [{"subject": found.full_name, "version": found.version}]

    # Subjects.

    async def subjects(self, request: Request) -> Any:
        return [self.registry.latest(s).full_name for s in self.registry.subjects()]

    def _subject(self, request: Request) -> str:
        name = request.path_params["subject"]
        subject = self.registry.subject_of(name)
        if subject is None:
            raise RegistryError(404, SUBJECT_NOT_FOUND, f"Subject '{name}' not found.")
        return subject

    def _version(self, request: Request) -> SchemaVersion:
        versions = self.registry.versions(self._subject(request))
        raw = request.path_params["version"]
        if raw in ("latest", "-1"):
            return versions[-1]
        if not raw.isdigit() or int(raw) < 1:
            msg = f"The specified version '{raw}' is not a valid version id. "
            msg += 'Allowed values are between [1, 2^31-1] and the string "latest"'
            raise RegistryError(422, INVALID_VERSION, msg)
        for version in versions:
            if version.version == int(raw):
                return version
        raise RegistryError(404, VERSION_NOT_FOUND, f"Version {raw} not found.")

    async def versions(self, request: Request) -> Any:
        return [v.version for v in self.registry.versions(self._subject(request))]

    async def version(self, request: Request) -> Any:
        return self._registered(self._version(request))

    async def raw_version(self, request: Request) -> Any:
        return self._version(request).schema

    # Posting a schema.

    async def lookup(self, request: Request) -> Any:
        subject = self._subject(request)
        found = self.registry.matching(await self._schema(request), subject)
        if found is None:
            raise RegistryError(404, SCHEMA_NOT_FOUND, "Schema not found")
        return self._registered(found)

    async def register(self, request: Request) -> Any:
        name = request.path_params["subject"]
        subject = self.registry.subject_of(name)
        schema = await self._schema(request)
        found = self.registry.matching(schema, subject) if subject else None
        if found is None:
            msg = (
                f"Subject {name} is in read-only mode: a new schema version is a reviewed "
                "change to the ledger's repository (crm-ledger schemas register)"
            )
            raise RegistryError(422, NOT_PERMITTED, msg)
        return {"id": found.schema_id}

    async def compatible(self, request: Request) -> Any:
        return self._compatibility(await self._schema(request), [self._version(request)])

    async def compatible_with_all(self, request: Request) -> Any:
        versions = self.registry.versions(self._subject(request))
        return self._compatibility(await self._schema(request), versions)

    def _compatibility(self, schema: dict[str, Any], against: list[SchemaVersion]) -> Any:
        problems = [
            f"version {v.version}: {problem}"
            for v in against
            for problem in compatibility_problems(schema, v.schema)
        ]
        return {"is_compatible": not problems, "messages": problems}

    async def _schema(self, request: Request) -> dict[str, Any]:
        """The schema a request posts: {"schema": "<the schema as a JSON string>"}."""
        try:
            body = json.loads(await _body(request))
            kind = body.get("schemaType", "AVRO")
            schema = json.loads(body["schema"])
        except (ValueError, TypeError, KeyError, AttributeError):
            msg = 'Invalid schema: send {"schema": "<the Avro schema as a JSON string>"}'
            raise RegistryError(422, INVALID_SCHEMA, msg) from None
        if kind != "AVRO":
            raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema type {kind}: only AVRO")
        try:
            canonical_form(schema)
        except SchemaError as e:
            raise RegistryError(422, INVALID_SCHEMA, f"Invalid schema: {e}") from None
        if not isinstance(schema, dict):
            raise RegistryError(422, INVALID_SCHEMA, "Invalid schema: a record schema is expected")
        return schema

    # Settings.

    async def config(self, request: Request) -> Any:
        if "subject" in request.path_params:
            self._subject(request)
        return {"compatibilityLevel": COMPATIBILITY}

    async def mode(self, request: Request) -> Any:
        if "subject" in request.path_params:
            self._subject(request)
        return {"mode": "READONLY"}

    def _registered(self, version: SchemaVersion) -> dict[str, Any]:
        return {
            "subject": version.full_name,
            "version": version.version,
            "id": version.schema_id,
            "schema": json.dumps(version.schema),
        }

    async def refuse_change(self, request: Request) -> Any:
        msg = "this registry is read-only: its schemas are a reviewed change to the repository"
        raise RegistryError(422, NOT_PERMITTED, msg)
