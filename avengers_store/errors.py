"""One exception family: everything the library raises on purpose is an ``AvengersError``."""

from __future__ import annotations


class AvengersError(Exception):
    """Base class. The message is meant for a person: it says what failed and what to do.

    It speaks the library's language: ``location`` names the argument (the function's parameter,
    ``"k"``) or the file, row and column an error is about, and a message that tells the caller
    to set another parameter writes its name in backquotes (``pass `create_models```). The CLI
    shows both as the flags that fill those parameters (``--k``, ``--create-models``).
    """

    def __init__(self, message: str = "", *, location: str | None = None) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.message = message
        self.location = location


class ConfigurationError(AvengersError):
    """A setting, argument or environment variable is missing or invalid."""


class ConnectionFailed(AvengersError):
    """The database could not be reached."""


class StoreUnavailable(ConnectionFailed):
    """The store's database was lost or cannot be reached now (stopped, restarting, unreachable).

    The call kept nothing half done; the message says how to start or reach the store. The
    clients reconnect by themselves on a later call once the server is back."""


class ExtensionMissing(AvengersError):
    """The target database lacks pgvector."""


class SchemaOutOfDate(AvengersError):
    """The database schema revision does not match this version of the library."""


class InputError(AvengersError):
    """A file, row, column or argument supplied by the user is invalid.

    ``location`` names where (e.g. ``"data.csv row 17 column 'score'"``) so it can be shown alone;
    for a bad argument it is the name of the function's parameter (``"k"``, ``"split_map"``).
    """


class NotFound(AvengersError):
    """A named object (model, dataset, clustering) does not exist."""


class StoreStateError(AvengersError):
    """The store is not in a state that allows the operation (e.g. no active clustering)."""


class EndpointError(AvengersError):
    """A model endpoint failed (connection refused, timeout, 5xx, malformed response, no key).

    ``timed_out``: it failed because time ran out (its own timeout or the call's deadline)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class AllEndpointsFailed(EndpointError):
    """Every candidate model endpoint failed for one request (or the deadline passed first).

    ``failures`` lists a ``Fallback`` per candidate that failed; ``timed_out`` is true when every
    one of them timed out or the deadline passed."""

    def __init__(
        self, message: str, *, timed_out: bool = False, failures: tuple[object, ...] = ()
    ) -> None:
        super().__init__(message, timed_out=timed_out)
        self.failures = failures
