"""Who may do what in the console: every route declares its roles, and nothing else passes."""

from __future__ import annotations

from dataclasses import dataclass

AGENT, ANALYST, AUDITOR, ADMIN = "agent", "analyst", "auditor", "admin"
ROLES = (AGENT, ANALYST, AUDITOR, ADMIN)
#: Everyone signed in.
ANYONE = frozenset(ROLES)
#: Who sees customers' personal fields (others see them masked).
SEES_PERSONAL = frozenset({AGENT, ADMIN})


@dataclass(frozen=True, slots=True)
class Access:
    """A route's declaration: its path, methods and the roles allowed (empty: public); JSON
    or a page; whether a POST must carry the session's CSRF token (every form does; the
    schema registry's API, called by programs without a session, does not)."""

    path: str
    methods: tuple[str, ...]
    roles: frozenset[str]
    api: bool
    csrf: bool = True
    #: The access log's name for what this route does, when it reads a customer's personal
    #: data or is an administrative act (each request, allowed or refused, is recorded).
    logged: str | None = None


def mask(value: str | None) -> str | None:
    """A personal value as an analyst sees it: its first letter and its length's shape."""
    if not value:
        return value
    return value[0] + "•" * min(len(value) - 1, 8)
