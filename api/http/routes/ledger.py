"""The ledger, read over HTTP: replica status, block headers, a block with its certificate.

Why any authenticated member may read it: the ledger is the cooperative's shared record, and
what it holds is pseudonymous by construction (public keys, hashes, contract transaction
types); a member checks its receipts against it without trusting the vault. Transaction
bodies are NOT served here: an access request names the subjects it covered, and who asked
whose data is for the DPO's access log (api/http/routes/dpo.py), not for every member.

The replicas themselves are read in api/services/replicas.py (status, and each one's chain as
it serves it); this module turns what they served into responses.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, LedgerDep, strict_query
from api.http.errors import ApiError
from api.services.gateway import LedgerGateway, LedgerUnavailable
from api.services.replicas import LedgerStatus, ledger_status
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.crypto import digest
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import block_hash, verify_block

router = APIRouter(
    prefix="/v1/ledger",
    tags=["ledger"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

BLOCKS_PAGE_MAX = 100


class BlockNotFound(ApiError):
    status = 404
    title = "No such block"


# -- responses ----------------------------------------------------------------------------


class BlockHeader(BaseModel):
    height: int
    hash: str = Field(description="hex header hash: what the next block's prev_hash holds")
    prev_hash: str
    time: dt.datetime = Field(description="block time chosen by the primary (UTC)")
    time_ms: int
    tx_count: int
    state_root: str
    results_digest: str
    batch_digest: str


class BlockPage(BaseModel):
    blocks: list[BlockHeader]
    height: int | None = Field(description="highest height a reachable replica stored")
    next_from_height: int | None = Field(description="the next page's from_height, if any")


class CertificateOut(BaseModel):
    view: int
    signers: list[int] = Field(description="replica ids whose COMMIT signatures follow")
    signatures: list[str] = Field(description="hex Ed25519 signatures, in signer order")


class TransactionOut(BaseModel):
    tx_id: str = Field(description="hex SHA-256 of the contract transaction (receipts name it)")
    type: str | None = Field(description="contract transaction type; null if undecodable")
    author: str | None = Field(description="hex public key of the author (a pseudonym)")
    client: str = Field(description="hex public key of the PBFT client that submitted it")


class OmissionOut(BaseModel):
    index: int = Field(description="position of the request in the ordered batch")
    request_digest: str = Field(
        description="hex digest of the PBFT request (the batch digest covers it)"
    )
    code: str = Field(
        description="why its body is not kept: the contracts' refusal code, or `redacted` "
        "(an erasure everywhere forgot a subject it named; the subject's receipt holds the "
        "request whose digest this is)"
    )


class BlockOut(BlockHeader):
    certificate: CertificateOut
    transactions: list[TransactionOut]
    omitted: list[OmissionOut] = Field(
        description="requests whose bodies the block does not hold (refused by the contracts, "
        "or redacted after an erasure): only their digest and why stay in the chain"
    )
    verified: bool = Field(
        description="batch digest, client signatures and 2f+1 commit signatures verify "
        "against the genesis validator keys"
    )


# -- blocks as responses ------------------------------------------------------------------


def _hex(b: bytes) -> str:
    return b.hex()


def header_of(block: m.Block) -> BlockHeader:
    return BlockHeader(
        height=block.height,
        hash=_hex(block_hash(block)),
        prev_hash=_hex(block.prev_hash),
        time=dt.datetime.fromtimestamp(block.time_ms / 1000, dt.UTC),
        time_ms=block.time_ms,
        tx_count=block.size,
        state_root=_hex(block.state_root),
        results_digest=_hex(block.results_digest),
        batch_digest=_hex(block.batch_digest),
    )


def _transaction(request: m.Request) -> TransactionOut:
    try:
        signed = txmod.decode(request.tx)
    except txmod.MalformedTx:
        # Ordered, and held in the block, yet not a contract transaction: only an
        # application other than the contracts (a test's key-value store) leaves one here.
        return TransactionOut(
            tx_id=digest(request.tx).hex(),
            type=None,
            author=None,
            client=_hex(request.client_id),
        )
    return TransactionOut(
        tx_id=_hex(signed.tx_id),
        type=signed.type,
        author=_hex(signed.author),
        client=_hex(request.client_id),
    )


def block_out(block: m.Block, gateway: LedgerGateway) -> BlockOut:
    return BlockOut(
        **header_of(block).model_dump(),
        certificate=CertificateOut(
            view=block.view,
            signers=list(block.signers),
            signatures=[_hex(s) for s in block.certificate],
        ),
        transactions=[_transaction(r) for r in block.requests],
        omitted=[
            OmissionOut(
                index=o.index,
                request_digest=_hex(o.request_digest),
                code=o.code.decode("ascii", "replace"),
            )
            for o in block.omitted
        ],
        verified=verify_block(block, gateway.genesis.public_keys()),
    )


# -- routes -------------------------------------------------------------------------------


@router.get("/status")
def status(member: CurrentMember, ledger: LedgerDep) -> LedgerStatus:
    """Each replica's height and view, or that it is unreachable; whether 2f+1 answer."""
    return ledger_status(ledger)


@router.get("/blocks")
def blocks(
    member: CurrentMember,
    ledger: LedgerDep,
    from_height: Annotated[int, Query(ge=1, le=2**62)] = 1,
    limit: Annotated[int, Query(ge=1, le=BLOCKS_PAGE_MAX)] = 20,
) -> BlockPage:
    """Block headers from `from_height` upwards, each from a block whose certificate verified.

    The header hash chains the blocks: each `prev_hash` is the previous header's `hash`.
    """
    tip = ledger_status(ledger).height
    if tip is None:
        raise LedgerUnavailable("no replica answered")
    last = min(tip, from_height + limit - 1)
    headers = [header_of(ledger.block(h)) for h in range(from_height, last + 1)]
    return BlockPage(blocks=headers, height=tip, next_from_height=last + 1 if last < tip else None)


@router.get("/blocks/{height}")
def block(
    member: CurrentMember,
    ledger: LedgerDep,
    height: Annotated[int, Path(ge=1, le=2**62)],
) -> BlockOut:
    """One block with its commit certificate and its transactions' ids, types and authors.

    `verified` is recomputed here from the genesis validator keys; a client can redo it from
    the certificate without trusting this service (docs/PBFT.md, "blocks").
    """
    tip = ledger_status(ledger).height
    if tip is None or height > tip:
        raise BlockNotFound(f"no block at height {height} yet")
    return block_out(ledger.block(height), ledger)
