"""The subject-access report: everything the ledger holds on one customer, and who looked.

For a data subject's request (GDPR article 15): the profile, every event with when it
occurred and when it was recorded, the consent history, identities, merges, value per
currency, predictions under the latest CLV model, and every access record about them. After
an erasure it says what was erased and when (the sealed fields are unreadable; what remains
is what the erasure kept on purpose).
"""

from __future__ import annotations

import dataclasses
import html
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crm_ledger.errors import CrmLedgerError
from crm_ledger.services.ports import plain

if TYPE_CHECKING:
    from crm_ledger.services.container import Services

#: The events of the consent history.
CONSENT_EVENTS = ("ConsentChanged",)


def subject_access(services: Services, customer_id: str) -> dict[str, Any]:
    """The report as plain values (times in ISO 8601)."""
    customer = services.ledger.customer(customer_id)
    history = services.records.history(customer_id)
    values = services.read_models.values(customer_id)
    try:
        model = services.predictions.model()
        predicted: Any = dataclasses.asdict(services.predictions.show(customer_id, model.model_id))
        predicted |= {"model_id": model.model_id, "currency": model.currency}
    except CrmLedgerError:
        predicted = None
    erased = [e for e in history if e.event_type == "CustomerErased"]
    report = {
        "report": "subject access",
        "customer_id": customer_id,
        "made_at": datetime.now(UTC),
        "profile": customer.profile,
        "lifecycle_stage": customer.lifecycle_stage,
        "identities": customer.identities,
        "organisations": customer.organisations,
        "merged_into": customer.merged_into,
        "merged_from": customer.merged_from,
        "consent_now": customer.consent,
        "consent_history": [
            dataclasses.asdict(e) for e in history if e.event_type in CONSENT_EVENTS
        ],
        "value": [dataclasses.asdict(v) for v in values],
        "predicted": predicted,
        "erasure": [
            {"recorded_at": e.recorded_at, "occurred_at": e.occurred_at, **e.details}
            for e in erased
        ],
        "events": [dataclasses.asdict(e) for e in history],
        "accesses": [dataclasses.asdict(r) for r in services.access.about(customer_id)],
    }
    shaped: dict[str, Any] = plain(report)
    return shaped


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def to_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (no script, no outside resource)."""
    who = html.escape(report["customer_id"])
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>What we hold on {who}</title>",
        "<style>body{font-family:sans-serif;margin:2rem;max-width:70rem}"
        "table{border-collapse:collapse;margin-bottom:1.5rem}"
        "td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}"
        "</style></head><body>",
        f"<h1>What the ledger holds on {who}</h1>",
        f"<p>Made {html.escape(report['made_at'])}.</p>",
    ]
    if report["erasure"]:
        when = ", ".join(html.escape(str(e["recorded_at"])) for e in report["erasure"])
        parts.append(
            f"<p><strong>Personal data erased</strong> on {when}: the sealed fields below can "
            "no longer be read by anyone; orders, amounts, times and channels were kept.</p>"
        )
    sections = [
        ("Profile", [report["profile"] | {"lifecycle_stage": report["lifecycle_stage"]}]),
        ("Identities", [{"system": s, "value": v} for s, v in report["identities"]]),
        (
            "Organisations",
            [{"organisation": o, "role": r} for o, r in report["organisations"].items()],
        ),
        ("Merges", [{"merged_into": report["merged_into"], "merged_from": report["merged_from"]}]),
        ("Consent now", [{"purpose/channel": k, **v} for k, v in report["consent_now"].items()]),
        ("Consent history", report["consent_history"]),
        ("Value", report["value"]),
        ("Predicted value", [report["predicted"]] if report["predicted"] else []),
        ("Every event, with when it occurred and when it was recorded", report["events"]),
        ("Who accessed this customer's data", report["accesses"]),
    ]
    for title, rows in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_table(rows))
    parts.append("</body></html>\n")
    return "".join(parts)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>None.</p>"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return html.escape(json.dumps(value, ensure_ascii=False))
    return html.escape(str(value))
