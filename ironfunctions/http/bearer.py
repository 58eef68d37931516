"""Bearer JWT (HS256) checks: the API key for ``/v1/*`` and a route's ``jwt_key``.

Pure (no Twisted): ``api/auth.py`` reads the header from a twisted.web request, the
runner's ``Invoker`` from an ``Invocation``.
"""

from __future__ import annotations

from typing import Any

import jwt

from ironfunctions.errors import Unauthorized


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def verify_jwt(token: str | None, key: str, message: str | None = None) -> dict[str, Any]:
    """Return the claims of ``token`` if it is an HS256 JWT signed with ``key`` with an
    ``exp`` (required: a token without one would be good forever, issue 11) and its
    exp/nbf/iat valid now; raise ``Unauthorized`` otherwise. ``message`` replaces the
    reason if given."""
    if token is None:
        raise Unauthorized(message or "Missing Bearer token")
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=["HS256"], options={"require": ["exp"]})
        return claims
    except jwt.InvalidTokenError as e:
        raise Unauthorized(message or f"Invalid token: {e}") from None
