"""Small helpers shared by the Klein handlers: JSON responses and request bodies."""

from __future__ import annotations

from typing import IO, Any

from klein import Klein
from werkzeug.routing import BaseConverter
from twisted.web.iweb import IRequest

from ironfunctions.api.errors import install_error_handler
from ironfunctions.http.jsonbody import dumps


class AnyPathConverter(BaseConverter):
    """``<anypath:x>``: the rest of the path, empty segments and all (werkzeug's
    ``path`` refuses a leading '/', which route paths such as ``//a`` have)."""

    regex = ".+"
    weight = 300
    part_isolating = False


def klein_app() -> Klein:
    """A Klein app with our URL rules: no redirects for '//' or a trailing '/', and the
    JSON error map installed."""
    app = Klein()
    app.url_map.converters["anypath"] = AnyPathConverter
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.redirect_defaults = False
    install_error_handler(app)
    return app


def json_response(request: IRequest, value: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return dumps(value)


def body_of(request: IRequest) -> bytes:
    """The whole request body (its size was already bounded by the Site)."""
    content: IO[bytes] | None = request.content  # IRequest is unannotated
    if content is None:
        return b""
    content.seek(0)
    return content.read()
