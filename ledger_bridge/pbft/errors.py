"""Two kinds of protocol failure, kept apart on purpose (h11's split).

`RemoteProtocolError`: a peer or client sent something malformed or unauthentic. Expected in a
Byzantine setting: the replica ignores the input and counts it; nothing crashes.

`LocalProtocolError`: *we* broke an invariant (a bug, or the caller misused the API, e.g. called
`advance()` with a `Ready` it was not handed). Never caught inside the core: crash loudly.

Neither message ever carries payload bytes (transactions may be personal-data derived): only
the kind of defect.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class; catch one of the two subclasses, never this."""


class RemoteProtocolError(ProtocolError):
    """Malformed or unauthentic input from a peer or client: drop it and count it."""


class LocalProtocolError(ProtocolError):
    """Our own invariant broke: a bug or API misuse. Do not catch."""
