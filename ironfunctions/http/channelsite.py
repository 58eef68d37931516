"""``ChannelSite``: what a lean ``/r/`` channel (``http/channel.py``) needs of the site
that built it (``http/site.py``'s ``FastSite``), so neither module imports the other."""

from __future__ import annotations

from typing import Callable, Protocol as TypingProtocol

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol

from ironfunctions.http.budget import BodyBudget
from ironfunctions.http.watchdog import Watchdog
from ironfunctions.runner.invoker import Invoker


class ChannelSite(TypingProtocol):
    """What a ``FastChannel`` needs of the site that built it (``FastSite``).

    ``open_connections`` is the site's count of open connections: the channel adds
    one when its connection opens and takes it back when it closes, whether or not
    the connection was handed to twisted.web in between.
    """

    open_connections: int

    @property
    def invoker(self) -> Invoker:
        """Answers the requests the channel frames."""

    @property
    def clock(self) -> IReactorTime:
        """For the time a phase of a connection begins."""

    @property
    def watchdog(self) -> Watchdog:
        """Holds every connection to its deadlines (``http/deadlines.py``)."""

    @property
    def budget(self) -> BodyBudget:
        """The node's request body bytes (``http/budget.py``)."""

    @property
    def date(self) -> Callable[[], bytes]:
        """The Date header's value now."""

    @property
    def max_request_size(self) -> int:
        """A larger body goes to twisted.web (its 413)."""

    @property
    def max_buffered(self) -> int:
        """Stop reading beyond this many buffered bytes while a call runs."""

    @property
    def log_access(self) -> bool:
        """Log each request at debug level."""

    def build_web_channel(self, addr: IAddress | None) -> Protocol:
        """An ordinary twisted.web channel of the site, for a connection handed over."""
