"""Tokens: who may call the API.

For now one admin token (``TINYINGEST_ADMIN_TOKEN``, or generated on first start and
kept in ``<data_dir>/admin_token``) grants everything. Tokens come from the
``Authorization: Bearer`` header or, as Tinybird's CLI sends them, ``?token=``; the
header wins when both are present.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


def load_admin_token(configured: str | None, data_dir: str) -> tuple[str, bool]:
    """The admin token, and whether it was generated just now (to print it once)."""
    if configured:
        return configured, False
    path = Path(data_dir) / "admin_token"
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = "p." + secrets.token_urlsafe(32)
    # Written with 0600 from the start: the token grants everything.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, True


def request_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a request carries: the Bearer header first, else ``?token=``."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


class Authorizer:
    def __init__(self, admin_token: str) -> None:
        self._admin = admin_token.encode()

    def is_admin(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._admin)
