"""Tokens: who may write and read what.

* The admin token (``TINYINGEST_ADMIN_TOKEN``, or generated on first start and kept in
  ``<data_dir>/admin_token``) grants everything (scope ``ADMIN``).
* Each ``TOKEN "name" READ|APPEND`` line of a datafile names a token with Tinybird's
  scopes: ``DATASOURCES:APPEND:<ds>``, ``DATASOURCES:READ:<ds>`` (which also reads
  ``<ds>_quarantine``), ``PIPES:READ:<pipe>``. A token named in several files gets every
  scope. Token values are generated once and kept in ``<data_dir>/tokens.json``;
  ``GET /v0/tokens`` (admin) lists them.

Tokens come from the ``Authorization: Bearer`` header or, as Tinybird's CLI sends them,
``?token=``; the header wins when both are present.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from tinyingest.datafiles import Project

ADMIN = "ADMIN"
DATASOURCES_APPEND = "DATASOURCES:APPEND"
DATASOURCES_READ = "DATASOURCES:READ"
PIPES_READ = "PIPES:READ"


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    value: str
    scopes: frozenset[tuple[str, str | None]]  # (type, resource); ADMIN has no resource

    @property
    def is_admin(self) -> bool:
        return (ADMIN, None) in self.scopes

    def can(self, scope: str, resource: str) -> bool:
        return self.is_admin or (scope, resource) in self.scopes

    def resources(self, scope: str) -> set[str]:
        """Every resource this token holds ``scope`` on (ignores ADMIN)."""
        return {resource for kind, resource in self.scopes if kind == scope and resource}

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "token": self.value, "scopes": [
            {"type": kind, "resource": resource, "filter": None}
            for kind, resource in sorted(self.scopes, key=lambda s: (s[0], s[1] or ""))]}


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start: tokens grant access.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def load_admin_token(configured: str | None, data_dir: str) -> tuple[str, bool]:
    """The admin token, and whether it was generated just now (to print it once)."""
    if configured:
        return configured, False
    path = Path(data_dir) / "admin_token"
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = "p." + secrets.token_urlsafe(32)
    _write_private(path, token + "\n")
    return token, True


def project_tokens(project: Project, data_dir: str) -> list[Token]:
    """The tokens the datafiles name, with values kept (or created) in ``tokens.json``."""
    scopes: dict[str, set[tuple[str, str | None]]] = {}
    for datasource in project.datasources.values():
        for name, kind in datasource.tokens:
            scope = DATASOURCES_APPEND if kind.upper() == "APPEND" else DATASOURCES_READ
            scopes.setdefault(name, set()).add((scope, datasource.name))
    for pipe in project.pipes.values():
        for name, _ in pipe.tokens:
            scopes.setdefault(name, set()).add((PIPES_READ, pipe.name))
    path = Path(data_dir) / "tokens.json"
    values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if any(name not in values for name in scopes):
        for name in scopes:
            values.setdefault(name, "p." + secrets.token_urlsafe(32))
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(values, indent=1))
    return [Token(name, values[name], frozenset(kinds)) for name, kinds in sorted(scopes.items())]


def request_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a request carries: the Bearer header first, else ``?token=``."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


class Authorizer:
    def __init__(self, admin_token: str, tokens: list[Token] | None = None) -> None:
        self.tokens = [Token("admin token", admin_token, frozenset({(ADMIN, None)}))]
        self.tokens += tokens or []

    def identify(self, value: str | None) -> Token | None:
        """The token with this value; compares every one in constant time."""
        if not value:
            return None
        raw = value.encode()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(raw, token.value.encode()):
                found = token
        return found
