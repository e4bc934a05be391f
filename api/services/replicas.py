"""Reading the ledger's replicas one by one: each one's status, and its chain as IT serves it.

Why a reader of its own (`ReplicaReader`) next to the gateway's client: the client falls back
to another replica when one serves a bad block, which is right for a receipt and wrong for an
audit, where the bad block IS the finding. Both the ledger routes (status, blocks) and the
DPO's ledger verification read the replicas through this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from api.services.gateway import LedgerGateway
from ledger_bridge.client import LedgerError, TcpClientTransport
from ledger_bridge.pbft import messages as m

# Calls in flight to one replica while reading its chain: enough to hide the round trip,
# far below the transport's pending-call limit.
READ_CONCURRENCY = 32


class ReplicaStatus(BaseModel):
    id: int
    college: str
    reachable: bool
    height: int | None = Field(default=None, description="highest block the replica stored")
    view: int | None = None
    primary: int | None = Field(default=None, description="the primary in the replica's view")
    stable_seq: int | None = Field(
        default=None, description="the replica's stable checkpoint (its low watermark)"
    )
    redactions_applied: int | None = Field(
        default=None,
        description="redaction entries (erasures' forgotten transactions) its blocks reflect",
    )
    redactions_pending: int | None = Field(
        default=None, description="redaction entries its state lists and its blocks do not yet"
    )


class LedgerStatus(BaseModel):
    chain_id: str
    n: int = Field(description="replicas (3f+1)")
    f: int = Field(description="faulty replicas tolerated")
    quorum: int = Field(description="2f+1: replicas that must answer for the ledger to commit")
    answering: int
    quorum_reachable: bool
    height: int | None = Field(description="highest height a reachable replica stored")
    replicas: list[ReplicaStatus]


def replica_statuses(gateway: LedgerGateway) -> list[dict[str, Any] | None]:
    """Every replica's status, asked at once (an unreachable one costs its timeout once)."""
    n = gateway.genesis.n
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="ledger-status") as pool:
        return list(pool.map(gateway.status, range(n)))


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def ledger_status(gateway: LedgerGateway) -> LedgerStatus:
    genesis = gateway.genesis
    statuses = replica_statuses(gateway)
    replicas = []
    for v, s in zip(genesis.validators, statuses, strict=True):
        if s is None:
            replicas.append(ReplicaStatus(id=v.id, college=v.college, reachable=False))
        else:
            replicas.append(
                ReplicaStatus(
                    id=v.id,
                    college=v.college,
                    reachable=True,
                    height=int(s.get("height", 0)),
                    view=int(s.get("view", 0)),
                    primary=int(s.get("primary", 0)),
                    stable_seq=_int_or_none(s.get("stable_seq")),
                    redactions_applied=_int_or_none(s.get("redactions_applied")),
                    redactions_pending=_int_or_none(s.get("redactions_pending")),
                )
            )
    heights = [r.height for r in replicas if r.height is not None]
    answering = len(heights)
    quorum = 2 * genesis.f + 1
    return LedgerStatus(
        chain_id=genesis.chain_id,
        n=genesis.n,
        f=genesis.f,
        quorum=quorum,
        answering=answering,
        quorum_reachable=answering >= quorum,
        height=max(heights, default=None),
        replicas=replicas,
    )


@dataclass
class ReplicaChain:
    """One replica's blocks as it served them, from `start`, cut at the first gap."""

    replica: int
    blocks: list[m.Block] = field(default_factory=list)
    unreachable: bool = False
    undecodable_at: int | None = None  # a height whose bytes are not a block at all


class ReplicaReader:
    """Per-replica raw reads over connections of its own (see the module docstring)."""

    def __init__(self, gateway: LedgerGateway) -> None:
        self._genesis = gateway.genesis
        self._reader = gateway.vault_key  # the vault reads blocks on the client ports

    def chains(self, replicas: Sequence[int], start: int, end: int) -> list[ReplicaChain]:
        """Blocks start..end (inclusive) of each replica; runs its own event loop."""
        return asyncio.run(self._chains(replicas, start, end))

    async def _chains(self, replicas: Sequence[int], start: int, end: int) -> list[ReplicaChain]:
        transport = TcpClientTransport.for_genesis(self._genesis, self._reader)
        try:
            return list(
                await asyncio.gather(*(self._chain(transport, r, start, end) for r in replicas))
            )
        finally:
            await transport.close()

    async def _chain(
        self, transport: TcpClientTransport, replica: int, start: int, end: int
    ) -> ReplicaChain:
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(height: int) -> Any:
            async with gate:
                try:
                    answer = await transport.call(replica, "block", {"height": height})
                except LedgerError:
                    return LedgerError
                return answer.get("block")

        raws = await asyncio.gather(*(one(h) for h in range(start, end + 1)))
        chain = ReplicaChain(replica)
        for height, raw in zip(range(start, end + 1), raws, strict=True):
            if raw is LedgerError:
                chain.unreachable = True
                break
            if not isinstance(raw, bytes):
                break  # the replica has no block here (yet): it lags
            try:
                chain.blocks.append(m.decode_block(raw))
            except m.RemoteProtocolError:
                chain.undecodable_at = height
                break
        return chain
