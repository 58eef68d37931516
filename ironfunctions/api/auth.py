"""The API key of ``/v1/*``, ``/tasks``, ``/metrics`` and ``/stats``: the Bearer token
of a twisted.web request, and what it grants (the checks themselves are
``ironfunctions.http.bearer``'s, shared with ``/r/``).

A token may carry an ``apps`` claim, a list of app names (SPEC §3 Auth): it then sees
and changes only those apps. Every other app is answered as a missing one (404
``App not found``), also when the token tries to create it, so the answer never tells
whether a name outside the claim is taken. A token without the claim is an
operator's and sees everything; so does every request when no key is configured.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import unquote_to_bytes

import attrs
from twisted.web.iweb import IRequest

from ironfunctions.errors import AppNotFound, Unauthorized
from ironfunctions.http.bearer import parse_bearer, verify_jwt

T = TypeVar("T")


def bearer_token(request: IRequest) -> str | None:
    """The Bearer token of ``request``'s ``Authorization`` header, else None."""
    raw: bytes | None = request.getHeader(b"authorization")  # IRequest is unannotated
    return parse_bearer(raw.decode("latin-1") if raw else None)


@attrs.frozen
class Access:
    """What one request may see: every app (``apps`` None) or only those named."""

    apps: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        """True for a token limited to some apps (an ``apps`` claim)."""
        return self.apps is not None

    def allows(self, app_name: str) -> bool:
        """Whether ``app_name`` is one of this request's apps."""
        return self.apps is None or app_name in self.apps

    def check(self, app_name: str) -> None:
        """Raise ``AppNotFound`` unless ``app_name`` is one of this request's apps,
        in the form the handler got it and percent-decoded (as the datastore may see it)."""
        decoded = unquote_to_bytes(app_name).decode("utf-8", "replace")
        if not (self.allows(app_name) and self.allows(decoded)):
            raise AppNotFound()

    def only(self, items: Iterable[T], app_name_of: Callable[[T], str]) -> list[T]:
        """``items`` whose app (``app_name_of(item)``) this request may see."""
        return [item for item in items if self.allows(app_name_of(item))]


EVERYTHING = Access()


def access_of(claims: Mapping[str, Any]) -> Access:
    """What a verified token's claims grant. An ``apps`` claim that is not a list of
    strings makes the token invalid (never read as "every app")."""
    if "apps" not in claims:
        return EVERYTHING
    apps = claims["apps"]
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
        raise Unauthorized(Unauthorized.message)
    return Access(frozenset(apps))


def authorize(request: IRequest, key: str) -> Access:
    """What ``request`` may do: everything when no key is configured, else what its
    Bearer token grants. Raise ``Unauthorized`` for a missing or invalid token."""
    if not key:
        return EVERYTHING
    return access_of(verify_jwt(bearer_token(request), key, Unauthorized.message))
