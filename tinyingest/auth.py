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

JWTs (api.md section 7, Tinybird's format) are tokens nobody stores: HS256-signed with
the admin token, payload ``{"name", "exp", "scopes": [{"type": "PIPES:READ", "resource":
pipe, "fixed_params"?: {...}}, {"type": "DATASOURCES:READ", "resource": ds, "filter"?:
sql}]}`` (``workspace_id`` and ``limits`` are accepted and not used). :func:`decode_jwt`
checks them: ``alg`` must be ``HS256`` (``none`` and every other one are refused), the
signature is compared in constant time, ``exp`` is required and ``nbf`` honoured.
``fixed_params`` override the request's parameters of that pipe; a ``filter`` limits the
rows the token reads from that data source (not its quarantine).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import collections
import json
import math
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyingest.datafiles import Project
from tinyingest.pipes import check_row_filter
from tinyingest.template import ParamValue

ADMIN = "ADMIN"
DATASOURCES_APPEND = "DATASOURCES:APPEND"
DATASOURCES_READ = "DATASOURCES:READ"
PIPES_READ = "PIPES:READ"


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    value: str
    scopes: frozenset[tuple[str, str | None]]  # (type, resource); ADMIN has no resource
    #: JWT ``fixed_params``: pipe -> parameters that override the request's.
    fixed_params: Mapping[str, Mapping[str, ParamValue]] = field(
        default_factory=dict, compare=False)
    #: JWT ``filter``: data source -> SQL condition on the rows it may read.
    filters: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: A JWT's ``exp`` (epoch seconds); None for stored tokens.
    expires: float | None = None

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


def new_token() -> str:
    """A token value: 256 random bits (``tinyingest token`` prints one)."""
    return "p." + secrets.token_urlsafe(32)


#: The admin token grants everything and signs JWTs: shorter ones are refused at start.
MIN_ADMIN_TOKEN_CHARS = 32
#: Bits a token's characters must carry, estimated from their frequencies: a random hex
#: token of 32 characters has about 115, ``new_token()`` about 220.
MIN_ADMIN_TOKEN_BITS = 80
#: Words of example and placeholder values (compared lowercased, letters and digits only).
_PLACEHOLDERS = ("changeme", "replaceme", "password", "secret", "example", "placeholder",
                 "yourtoken", "xxxxxxxx")


class WeakAdminToken(ValueError):
    """The configured admin token could be guessed (the message says why, not the token)."""


def check_admin_token(token: str, origin: str) -> None:
    """Raise :class:`WeakAdminToken` for a placeholder, short or repetitive token."""
    reason = None
    letters = "".join(c for c in token.lower() if c.isalnum())
    counts = collections.Counter(token)
    bits = -sum(n * math.log2(n / len(token)) for n in counts.values())
    if any(word in letters for word in _PLACEHOLDERS):
        reason = "it is a placeholder"
    elif len(token) < MIN_ADMIN_TOKEN_CHARS:
        reason = f"it is shorter than {MIN_ADMIN_TOKEN_CHARS} characters"
    elif bits < MIN_ADMIN_TOKEN_BITS:
        reason = "its characters repeat too much to be random"
    if reason is not None:
        raise WeakAdminToken(
            f"refusing the admin token from {origin}: {reason}. Generate one with "
            "`tinyingest token`, or unset TINYINGEST_ADMIN_TOKEN to have one generated "
            "in the data directory")


def load_admin_token(configured: str | None, data_dir: str) -> tuple[str, bool]:
    """The admin token, and whether it was generated just now (to print it once).
    :raises WeakAdminToken: the configured or stored one could be guessed."""
    if configured:
        check_admin_token(configured, "TINYINGEST_ADMIN_TOKEN")
        return configured, False
    path = Path(data_dir) / "admin_token"
    if path.exists():
        token = path.read_text().strip()
        check_admin_token(token, str(path))
        return token, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
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
            values.setdefault(name, new_token())
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


class InvalidToken(Exception):
    """A JWT that cannot be used: malformed, badly signed, expired (the message says
    which, and never repeats the token)."""


#: JWTs longer than this are refused unread.
MAX_JWT_BYTES = 16 << 10
#: Scope types a JWT may carry (Tinybird's).
JWT_SCOPES = (PIPES_READ, DATASOURCES_READ)


def _b64decode(part: str, what: str) -> bytes:
    if not part or any(c not in _B64URL for c in part) or len(part) % 4 == 1:
        raise InvalidToken(f"invalid token: malformed JWT {what}")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken(f"invalid token: malformed JWT {what}") from None


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken(f"invalid token: the JWT {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"invalid token: the JWT {what} is not a JSON object")
    return value


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(payload: Mapping[str, Any], secret: str) -> str:
    """An HS256 JWT of ``payload`` signed with ``secret`` (the admin token), as
    Tinybird's ``tb token create jwt`` makes them."""
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"},
                                   separators=(",", ":")).encode())
    body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256)
    return f"{header}.{body}.{_b64encode(signature.digest())}"


def _param_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # as a JSON request body's values
    raise InvalidToken(f"invalid token: {where} must be a string, number, boolean or a "
                       "list of them")


def _param_value(value: Any, where: str) -> ParamValue:
    if isinstance(value, list):
        return [_param_text(item, where) for item in value]
    return _param_text(value, where)


def decode_jwt(value: str, secret: str, now: float | None = None) -> Token:
    """The token a JWT stands for; raises :class:`InvalidToken`.

    The signature is checked before the payload is read; ``alg`` must be ``HS256``.
    """
    if len(value) > MAX_JWT_BYTES:
        raise InvalidToken("invalid token: the JWT is too long")
    parts = value.split(".")
    if len(parts) != 3:
        raise InvalidToken("invalid token: malformed JWT")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    if header.get("alg") != "HS256":
        raise InvalidToken("invalid token: JWT algorithm must be HS256")
    signature = _b64decode(parts[2], "signature")
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(),
                        hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise InvalidToken("invalid token: bad JWT signature")
    payload = _json_object(_b64decode(parts[1], "payload"), "payload")
    now = time.time() if now is None else now
    exp = payload.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise InvalidToken("invalid token: the JWT has no numeric 'exp'")
    if now >= exp:
        raise InvalidToken("token has expired: the JWT's 'exp' is in the past")
    nbf = payload.get("nbf")
    if nbf is not None and (isinstance(nbf, bool) or not isinstance(nbf, (int, float))):
        raise InvalidToken("invalid token: the JWT's 'nbf' is not a number")
    if nbf is not None and now < nbf:
        raise InvalidToken("token is not valid yet: the JWT's 'nbf' is in the future")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidToken("invalid token: the JWT has no 'name'")
    scopes = payload.get("scopes")
    if not isinstance(scopes, list) or not scopes:
        raise InvalidToken("invalid token: the JWT has no 'scopes'")
    kinds: set[tuple[str, str | None]] = set()
    fixed: dict[str, dict[str, ParamValue]] = {}
    filters: dict[str, str] = {}
    for scope in scopes:
        if not isinstance(scope, dict):
            raise InvalidToken("invalid token: a JWT scope is not an object")
        kind, resource = scope.get("type"), scope.get("resource")
        if kind not in JWT_SCOPES:
            raise InvalidToken(f"invalid token: JWT scopes may be {' or '.join(JWT_SCOPES)}, "
                               f"not {str(kind)[:40]!r}")
        if not isinstance(resource, str) or not resource:
            raise InvalidToken(f"invalid token: a JWT {kind} scope has no 'resource'")
        kinds.add((kind, resource))
        params = scope.get("fixed_params")
        if params is not None:
            if kind != PIPES_READ or not isinstance(params, dict):
                raise InvalidToken("invalid token: 'fixed_params' must be an object, on a "
                                   f"{PIPES_READ} scope")
            fixed.setdefault(resource, {}).update(
                {str(k): _param_value(v, f"fixed_params.{k}") for k, v in params.items()})
        row_filter = scope.get("filter")
        if row_filter is not None and row_filter != "":
            if kind != DATASOURCES_READ or not isinstance(row_filter, str):
                raise InvalidToken("invalid token: 'filter' must be a string, on a "
                                   f"{DATASOURCES_READ} scope")
            try:
                checked = check_row_filter(row_filter)
            except ValueError as exc:
                raise InvalidToken(f"invalid token: {exc}") from None
            # Two filters on one data source: both apply. An unfiltered scope next to a
            # filtered one does not lift the filter.
            if resource in filters:
                checked = f"({filters[resource]}) AND ({checked})"
            filters[resource] = checked
    return Token(name, "", frozenset(kinds), fixed, filters, float(exp))


class Authorizer:
    def __init__(self, admin_token: str, tokens: list[Token] | None = None) -> None:
        self.tokens = [Token("admin token", admin_token, frozenset({(ADMIN, None)}))]
        self.tokens += tokens or []
        self._secret = admin_token

    def identify(self, value: str | None) -> Token | None:
        """The token with this value; compares every one in constant time. A value that
        is no stored token but has the shape of a JWT is checked as one.

        :raises InvalidToken: a JWT that is malformed, badly signed or expired.
        """
        if not value:
            return None
        raw = value.encode()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(raw, token.value.encode()):
                found = token
        if found is None and value.count(".") == 2:
            return decode_jwt(value, self._secret)
        return found
