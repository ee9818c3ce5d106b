"""The event contract in schemas/ agrees with the domain, and evolves only compatibly."""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import TYPE_CHECKING

import pytest

from crm_ledger.adapters.avro import SchemaRegistry
from crm_ledger.aggregates import CATALOGUE, PERSONAL_FIELDS, Customer, Initiative, Organisation
from crm_ledger.aggregates.touchpoint import ENVELOPE_FIELDS, Subject
from crm_ledger.cli import cli
from crm_ledger.errors import IncompatibleSchema
from tests.conftest import SCHEMAS

if TYPE_CHECKING:
    from pathlib import Path

    from click.testing import CliRunner

STORED_ONLY = {"originator_id", "originator_version", "timestamp", "addressed_to"}
AGGREGATE_OF = {
    Subject.CUSTOMER: Customer,
    Subject.ORGANISATION: Organisation,
    Subject.INITIATIVE: Initiative,
}


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.avsc").read_text())


def test_every_catalogue_type_has_one_schema_and_nothing_else_does() -> None:
    assert {p.stem for p in SCHEMAS.glob("*.avsc")} == set(CATALOGUE)


@pytest.mark.parametrize("event_type", sorted(CATALOGUE))
def test_a_schema_matches_its_event_class(event_type: str) -> None:
    schema = _schema(event_type)
    names = [f["name"] for f in schema["fields"]]
    event_class = getattr(AGGREGATE_OF[CATALOGUE[event_type]], event_type)

    assert schema["namespace"] == "crm_ledger.events"
    assert tuple(names[: len(ENVELOPE_FIELDS)]) == ENVELOPE_FIELDS
    stored = {f.name for f in dataclasses.fields(event_class)} - STORED_ONLY
    assert set(names) - {"customer_id"} == stored
    personal = {f["name"] for f in schema["fields"] if f.get("personal")}
    assert personal == set(PERSONAL_FIELDS.get(event_type, ()))


def test_the_registry_is_up_to_date_and_compatible() -> None:
    registry = SchemaRegistry(SCHEMAS)
    assert registry.pending() == []
    assert registry.check() == []
    ids = [v.schema_id for s in registry.subjects() for v in registry.versions(s)]
    assert len(ids) == len(set(ids))
    assert [v.version for v in registry.versions("OrderPlaced")] == [1, 2]


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    return copy


def _edit(folder: Path, name: str, change) -> None:  # type: ignore[no-untyped-def]
    path = folder / f"{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def test_schemas_check_rejects_a_field_added_without_default(
    schemas_copy: Path, runner: CliRunner
) -> None:
    _edit(
        schemas_copy,
        "OrderPlaced",
        lambda s: s["fields"].append({"name": "loyalty_points", "type": "long"}),
    )

    result = runner.invoke(cli, ["--schemas-dir", str(schemas_copy), "schemas", "check"])
    assert result.exit_code == 1
    assert (
        "OrderPlaced: cannot read version 1: field loyalty_points was added without a default"
        in result.stderr
    )
    assert "OrderPlaced: cannot read version 2" in result.stderr
    with pytest.raises(IncompatibleSchema):
        SchemaRegistry(schemas_copy).register()
    assert SchemaRegistry(schemas_copy).versions("OrderPlaced")[-1].version == 2


def test_schemas_check_rejects_a_narrowed_type_and_a_lost_enum_symbol(
    schemas_copy: Path, runner: CliRunner
) -> None:
    def narrow(s: dict) -> None:
        for f in s["fields"]:
            if f["name"] == "amount_minor":
                f["type"] = "int"

    def drop_symbol(s: dict) -> None:
        for f in s["fields"]:
            if f["name"] == "channel":
                f["type"]["symbols"].remove("partner")
                del f["type"]["default"]

    _edit(schemas_copy, "OrderRefunded", narrow)
    _edit(schemas_copy, "InteractionRecorded", drop_symbol)
    result = runner.invoke(cli, ["--schemas-dir", str(schemas_copy), "schemas", "check"])
    assert result.exit_code == 1
    assert (
        "OrderRefunded: cannot read version 1: amount_minor: type changed from long to int"
        in result.stderr
    )
    assert (
        "InteractionRecorded: cannot read version 1: channel: enum lost symbols ['partner']"
        in result.stderr
    )


def test_a_compatible_change_registers_as_a_new_version_with_a_new_id(
    schemas_copy: Path, runner: CliRunner
) -> None:
    _edit(
        schemas_copy,
        "OrderPlaced",
        lambda s: s["fields"].append(
            {"name": "coupon", "type": ["null", "string"], "default": None}
        ),
    )
    before = SchemaRegistry(schemas_copy)
    old_ids = {v.schema_id for s in before.subjects() for v in before.versions(s)}

    check = runner.invoke(
        cli, ["--schemas-dir", str(schemas_copy), "--format", "json", "schemas", "check"]
    )
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["unregistered_changes"] == ["OrderPlaced"]
    result = runner.invoke(cli, ["--schemas-dir", str(schemas_copy), "schemas", "register"])
    assert result.exit_code == 0, result.output

    after = SchemaRegistry(schemas_copy)
    latest = after.latest("OrderPlaced")
    assert latest.version == 3
    assert latest.schema_id not in old_ids
    assert {v.schema_id for s in after.subjects() for v in after.versions(s)} >= old_ids
    assert after.pending() == []
