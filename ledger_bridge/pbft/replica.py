"""The PBFT replica (interface first; the protocol logic follows in the next commits)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger_bridge.app import Application
from ledger_bridge.crypto import SigningKey
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.errors import LocalProtocolError
from ledger_bridge.pbft.messages import Block, Message, Reply


@dataclass(frozen=True)
class DurableDelta:
    """Changes to the replica's durable records, as simple rows the shell stores verbatim.

    Records are (kind, key, value) with opaque bytes; keys of kind "log" are 8-byte big-endian
    sequence numbers so byte order is numeric order. Kinds: "meta" (key b"view": the current
    view; b"stable": the last stable checkpoint with its proof and snapshot) and "log" (one
    record per sequence number: the pre-prepare and the votes this replica must not forget).
    """

    put: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    delete: list[tuple[str, bytes]] = field(default_factory=list)
    delete_below: list[tuple[str, bytes]] = field(default_factory=list)  # drop keys < bound

    def empty(self) -> bool:
        return not (self.put or self.delete or self.delete_below)


@dataclass(frozen=True)
class DurableState:
    """What the node loaded from storage after a restart: kind -> [(key, value)] in key order,
    exactly the rows that the `DurableDelta`s it applied left behind."""

    records: dict[str, list[tuple[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message for one replica (`to`), or for every other replica (`to is None`)."""

    to: int | None
    msg: Message


@dataclass(frozen=True, slots=True)
class ClientReply:
    """A reply for the client whose public key is `client_id`."""

    client_id: bytes
    reply: Reply


@dataclass(frozen=True)
class Ready:
    """Work for the shell. Handle the fields IN THIS ORDER, then call `advance(ready)`.

    1. `persist`: apply to durable storage and fsync BEFORE sending anything below: a replica
       must never send a vote it could forget in a crash (TOCS §4.1, §4.4).
    2. `blocks`: committed blocks with their commit certificates; store them (the same
       transaction as `persist` is fine). Heights may repeat after a restart (idempotent put).
    3. `messages`: send to peers, best effort: the protocol retransmits what is lost.
    4. `replies`: send to clients, best effort: clients retry and hit the reply cache.
    """

    persist: DurableDelta
    blocks: list[Block]
    messages: list[Outbound]
    replies: list[ClientReply]


class Replica:
    """One PBFT replica; see the module docstring for the theory of operation."""

    def __init__(
        self,
        config: ClusterConfig,
        replica_id: int,
        signing_key: SigningKey,
        app: Application,
        *,
        durable: DurableState | None = None,
    ) -> None:
        if not 0 <= replica_id < config.n:
            raise LocalProtocolError("replica id outside the cluster")
        self.config = config
        self.id = replica_id
        self.key = signing_key
        self.app = app
        self.view = 0

    def step(self, msg: Message, now_ms: int) -> None:
        """Handle one message from a peer replica or a client."""
        raise NotImplementedError

    def tick(self, now_ms: int) -> None:
        """Advance timers: batch wait, view-change timeout, heartbeat/status."""
        raise NotImplementedError

    def has_ready(self) -> bool:
        raise NotImplementedError

    def ready(self) -> Ready:
        raise NotImplementedError

    def advance(self, ready: Ready) -> None:
        raise NotImplementedError


__all__ = ["ClientReply", "DurableDelta", "DurableState", "Outbound", "Ready", "Replica", "m"]
