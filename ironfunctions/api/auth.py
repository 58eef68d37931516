"""The API key of ``/v1/*``: the Bearer token of a twisted.web request (the checks
themselves are ``ironfunctions.http.bearer``'s, shared with ``/r/``)."""

from __future__ import annotations

from twisted.web.iweb import IRequest

from ironfunctions.http.bearer import parse_bearer


def bearer_token(request: IRequest) -> str | None:
    """The Bearer token of ``request``'s ``Authorization`` header, else None."""
    raw: bytes | None = request.getHeader(b"authorization")  # IRequest is unannotated
    return parse_bearer(raw.decode("latin-1") if raw else None)
