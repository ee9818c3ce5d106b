"""The Confluent Schema Registry API over schemas/registry.json: look-ups by id and subject,
the id of a schema (by its canonical form), compatibility, and registration refused in the
registry's own error format unless the schema is already there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.adapters.avro import SchemaRegistry
from tests.web.conftest import signed_in

ROOT = Path(__file__).resolve().parents[2]
SUBJECT = "crm_ledger.events.OrderPlaced"


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry(ROOT / "schemas")


@pytest.fixture
def client(console: dict[str, Any]) -> Any:
    return signed_in(console["app"], None)  # no session: programs call this API


def _schema() -> dict[str, Any]:
    return dict(json.loads((ROOT / "schemas" / "OrderPlaced.avsc").read_text()))


def _error(response: Any, status: int, code: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/vnd.schemaregistry.v1+json")
    body = response.json()
    assert body["error_code"] == code
    return str(body["message"])


def test_subjects_are_the_record_names_and_ids_resolve(
    client: Any, registry: SchemaRegistry
) -> None:
    subjects = client.get("/subjects").json()
    assert len(subjects) == len(registry.subjects())
    assert SUBJECT in subjects
    latest = registry.latest("OrderPlaced")
    by_id = client.get(f"/schemas/ids/{latest.schema_id}").json()
    assert json.loads(by_id["schema"]) == latest.schema
    assert client.get(f"/schemas/ids/{latest.schema_id}/schema").json() == latest.schema
    assert client.get(f"/schemas/ids/{latest.schema_id}/subjects").json() == [SUBJECT]
    versions = client.get(f"/subjects/{SUBJECT}/versions").json()
    assert versions == [v.version for v in registry.versions("OrderPlaced")]
    shown = client.get(f"/subjects/{SUBJECT}/versions/latest").json()
    assert (shown["id"], shown["version"], shown["subject"]) == (
        latest.schema_id,
        latest.version,
        SUBJECT,
    )
    # our own subject names answer too
    assert client.get("/subjects/OrderPlaced/versions/1").json()["version"] == 1
    assert client.get("/schemas/types").json() == ["AVRO"]
    assert client.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    assert client.get(f"/mode/{SUBJECT}").json() == {"mode": "READONLY"}


def test_a_schema_is_found_by_its_canonical_form(client: Any, registry: SchemaRegistry) -> None:
    schema = _schema()
    # docs and key order do not change the bytes a schema writes, so it is the same schema
    undocumented = {k: v for k, v in reversed(schema.items()) if k != "doc"}
    undocumented["fields"] = [{k: v for k, v in f.items() if k != "doc"} for f in schema["fields"]]
    expected = registry.latest("OrderPlaced").schema_id
    for sent in (schema, undocumented):
        body = {"schema": json.dumps(sent)}
        assert client.post(f"/subjects/{SUBJECT}", json=body).json()["id"] == expected
        assert client.post(f"/subjects/{SUBJECT}/versions", json=body).json() == {"id": expected}


def test_a_new_version_is_refused_in_the_registry_s_own_format(client: Any) -> None:
    schema = _schema()
    schema["fields"] = [*schema["fields"], {"name": "extra", "type": "string", "default": ""}]
    body = {"schema": json.dumps(schema)}
    message = _error(client.post(f"/subjects/{SUBJECT}/versions", json=body), 422, 42205)
    assert "read-only" in message
    _error(client.post(f"/subjects/{SUBJECT}", json=body), 404, 40403)
    _error(client.post("/subjects/crm_ledger.events.Nope/versions", json=body), 422, 42205)


def test_compatibility_is_checked_against_a_version_or_all(client: Any) -> None:
    schema = _schema()
    with_default = [*schema["fields"], {"name": "extra", "type": "string", "default": ""}]
    without = [*schema["fields"], {"name": "extra", "type": "string"}]
    url = f"/compatibility/subjects/{SUBJECT}/versions"
    ok = client.post(
        f"{url}/latest", json={"schema": json.dumps(schema | {"fields": with_default})}
    )
    assert ok.json() == {"is_compatible": True, "messages": []}
    bad = client.post(url, json={"schema": json.dumps(schema | {"fields": without})}).json()
    assert bad["is_compatible"] is False
    assert "extra" in bad["messages"][0]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/subjects/Nope/versions", 404, 40401),
        ("/subjects/other.ns.OrderPlaced/versions", 404, 40401),
        (f"/subjects/{SUBJECT}/versions/99", 404, 40402),
        (f"/subjects/{SUBJECT}/versions/0", 422, 42202),
        (f"/subjects/{SUBJECT}/versions/first", 422, 42202),
        ("/schemas/ids/99999", 404, 40403),
        ("/schemas/ids/-1", 404, 40403),
        ("/config/Nope", 404, 40401),
    ],
)
def test_unknown_subjects_versions_and_ids(client: Any, path: str, status: int, code: int) -> None:
    _error(client.get(path), status, code)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"schema": 5}',
        b'{"schema": "{\\"type\\": \\"record\\"}"}',
        b'{"schema": "\\"string\\""}',
        b'{"schemaType": "PROTOBUF", "schema": "syntax = \\"proto3\\";"}',
        b'{"nothing": 1}',
    ],
)
def test_bad_schemas_get_the_registry_s_error(client: Any, body: bytes) -> None:
    for path in (f"/subjects/{SUBJECT}", f"/subjects/{SUBJECT}/versions"):
        _error(client.post(path, content=body), 422, 42201)


def test_a_body_past_a_mebibyte_is_refused_unread(client: Any) -> None:
    big = json.dumps({"schema": json.dumps(_schema()), "pad": "x" * (1024 * 1024)})
    message = _error(client.post(f"/subjects/{SUBJECT}", content=big), 422, 42201)
    assert "larger than" in message

    def chunks() -> Any:  # no length given: counted as it comes
        yield b'{"schema": "'
        for _ in range(300):
            yield b"x" * 4096

    _error(client.post(f"/subjects/{SUBJECT}/versions", content=chunks()), 422, 42201)
