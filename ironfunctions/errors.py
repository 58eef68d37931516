"""Domain exceptions. They say what went wrong, never how to answer it over HTTP:
``http/errors.py`` holds the one map from these to status codes and bodies."""

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


class CallNotFound(IronFunctionsError):
    message = "Call not found"


class CallCompleted(IronFunctionsError):
    """A cancel asked for a call that already reached a final status."""

    message = "Call already completed"


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
    """The async queue cannot be reached (or is not ready yet)."""

    message = "queue unavailable"


class QueueFull(IronFunctionsError):
    """An app already has as many async calls, or as many payload bytes, waiting in
    the queue as its bound allows (SPEC §8 "Apps share fairly"): the submit is refused
    (429 + ``Retry-After``) and nothing of it is stored. ``bound`` names the setting
    (``ASYNC_MAX_QUEUED`` or ``ASYNC_MAX_QUEUED_BYTES``), ``limit`` its value."""

    message = "Too many async calls waiting in the queue; retry later"

    def __init__(self, app_name: str, bound: str, limit: int, retry_after: int = 5) -> None:
        what = "calls" if bound == "ASYNC_MAX_QUEUED" else "bytes of payload"
        super().__init__(
            f"App {app_name!r} has too many async {what} waiting in the queue "
            f"({bound}={limit}); retry later"
        )
        self.app_name = app_name
        self.bound = bound
        self.limit = limit
        self.retry_after = retry_after


class LeaseLost(IronFunctionsError):
    """A queue reservation is no longer held: its lease expired, it was released, or
    the item was removed or delivered again. Whoever held it must not ack it."""

    message = "queue lease lost"


class NotReady(IronFunctionsError):
    """The node is starting or stopping and cannot serve this request."""

    message = "service unavailable"


class ConfigError(IronFunctionsError):
    """Invalid configuration; the message names the variable."""

    message = "invalid configuration"


# -- running functions (drivers/ and runner/)


class DockerUnavailable(IronFunctionsError):
    """The container engine cannot be reached or failed in a way we cannot attribute
    to the function (an API error on create/start/wait)."""

    message = "container engine unavailable"


class ImageNotFound(IronFunctionsError):
    """The route's image is neither present locally nor pullable within the bound."""

    message = "Image not found"

    def __init__(self, image: str) -> None:
        super().__init__(f"Image not found: {image}")
        self.image = image


class ContainerNotFound(IronFunctionsError):
    """The container is gone (already removed)."""

    message = "container not found"


class Overloaded(IronFunctionsError):
    """This node cannot start another container within its admission bound;
    the client should retry after ``retry_after`` seconds (503 + Retry-After)."""

    message = "Too many calls in progress on this node; retry later"

    def __init__(self, message: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RouteMoved(Overloaded):
    """A call one worker process sent to another (``WORKERS`` > 1) waited there for the
    route's container, which moved to another worker meanwhile: the sending worker
    runs it again (``runner/hot_pool.py``). A 503 only if it moves twice."""

    message = "The route's containers moved to another worker process; retry"


class ResponseTooLarge(IronFunctionsError):
    """The function wrote more than MAX_RESPONSE_SIZE bytes to stdout."""

    message = "Function response too large"
