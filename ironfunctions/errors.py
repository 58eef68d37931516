"""Domain exceptions. They say what went wrong, never how to answer it over HTTP:
``api/errors.py`` holds the one map from these to status codes and bodies."""

from __future__ import annotations


class IronFunctionsError(Exception):
    """Base of every domain error; ``str(err)`` is a message fit for a client."""

    message = "error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)

    def __str__(self) -> str:
        return str(self.args[0])


class AppNotFound(IronFunctionsError):
    message = "App not found"


class AppAlreadyExists(IronFunctionsError):
    message = "App already exists"


class AppHasRoutes(IronFunctionsError):
    message = "Cannot remove apps with routes"


class RouteNotFound(IronFunctionsError):
    message = "Route not found"


class RouteAlreadyExists(IronFunctionsError):
    message = "Route already exists"


class ValidationError(IronFunctionsError):
    """Bad client input; the message lists every problem found."""

    message = "Invalid input"


class InvalidJSON(ValidationError):
    message = "Invalid JSON"


class PayloadTooLarge(IronFunctionsError):
    message = "Request body too large"


class Unauthorized(IronFunctionsError):
    message = "Invalid API Authorization token."


class DatastoreUnavailable(IronFunctionsError):
    """The datastore cannot be reached (or is not ready yet)."""

    message = "datastore unavailable"


class QueueUnavailable(IronFunctionsError):
    message = "queue unavailable"


class NotReady(IronFunctionsError):
    """The node is starting or stopping and cannot serve this request."""

    message = "service unavailable"


class ConfigError(IronFunctionsError):
    """Invalid configuration; the message names the variable."""

    message = "invalid configuration"
