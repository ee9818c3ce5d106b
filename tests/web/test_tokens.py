"""API tokens for programs: issued by `crm-ledger users token`, sent as a bearer header, acting
with the user's role; revoked, disabled or forged tokens get 401; only a hash is stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from crm_ledger.cli import cli

if TYPE_CHECKING:
    from pathlib import Path


def _cli(settings: Any, *args: str) -> Any:
    data = str(settings.data_dir)
    return CliRunner().invoke(cli, ["--data-dir", data, *args], catch_exceptions=False)


def _as(app: Any, token: str) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False)


def test_a_token_acts_with_its_user_s_role_until_revoked(console: dict[str, Any]) -> None:
    settings, app = console["settings"], console["app"]
    issued = _cli(settings, "users", "token", "analyst")
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip()
    assert token.startswith("crml_")
    users_file = next(settings.key_folder.glob("users.json")).read_text()
    assert token not in users_file
    secret = token.split("_", 2)[2]  # crml_<id>_<secret>; the secret may hold "_" itself
    assert len(secret) == 43
    assert secret not in users_file

    client = _as(app, token)
    assert client.get("/api/me").json()["name"] == "analyst"
    profile = client.get("/api/customers/C1").json()["customer"]["profile"]
    assert "•" in profile["email"]  # an analyst's token sees personal fields masked
    assert client.get("/api/value").status_code == 200
    assert client.get("/api/operations").status_code == 403  # admins only

    revoked = _cli(settings, "users", "revoke-tokens", "analyst")
    assert revoked.exit_code == 0, revoked.output
    refused = client.get("/api/me")
    assert refused.status_code == 401
    assert refused.json() == {"error": "the API token is unknown or revoked"}


def test_a_disabled_user_s_token_is_refused(console: dict[str, Any]) -> None:
    settings, app = console["settings"], console["app"]
    token = _cli(settings, "users", "token", "auditor").stdout.strip()
    assert _as(app, token).get("/api/audit/verify").status_code == 200
    assert _cli(settings, "users", "disable", "auditor").exit_code == 0
    assert _as(app, token).get("/api/audit/verify").status_code == 401


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "crml_",
        "crml_000000000000_" + "A" * 43,
        "crml_zzzzzzzzzzzz_" + "A" * 43,
        "Basic YWRtaW46cGFzcw==",
        "x" * 10_000,
        "crml_\x00\u202e",
    ],
)
def test_forged_tokens_are_refused(console: dict[str, Any], forged: str) -> None:
    client = TestClient(console["app"], follow_redirects=False)
    header = f"Bearer {forged}".encode()  # any bytes a header can hold
    answer = client.get("/api/customers/C1", headers={"Authorization": header})
    assert answer.status_code == 401


def test_a_token_for_someone_unknown_is_one_line(console: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--data-dir", str(console["settings"].data_dir), "users", "token", "nobody"]
    )
    assert result.exit_code != 0
    assert "no user named 'nobody'" in result.output
    assert "Traceback" not in result.output
