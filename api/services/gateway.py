"""The API's door to the ledger: submit contract transactions, read committed state, ship facts.

Why a gateway object rather than a client per request: a PBFT client may have one request in
flight (the replicas execute each client's requests in request-id order), so the gateway holds
a pool of clients, each with its own key, on one event-loop thread and one set of TCP
connections; a route borrows a client, submits, and gives it back. Routes run in FastAPI's
thread pool and call the synchronous methods here.

An async route (consented access, the hottest path) submits on a second pool instead, a lane
on its own event loop (`submit_from`): the wait for the replicas then costs no hop to the
gateway's thread and back, two cross-thread wake-ups of ~0.1 ms of CPU together. The lane has
its own connections and shares the gateway's height floor. The app's lifespan opens it
(`open_lane`) and closes it (`close_lane`) on its serving loop; a caller on a loop without a
lane still submits through the gateway's thread, so no lane is ever made that nothing closes.

Who signs what:
- the vault's ledger key signs what the contracts let the vault do for a member (register a
  dataset for its owner, anchor an upload, ask for a consumer's access, record an erasure or
  an expiry: `act`);
- a subject's or member's own key signs what only they may say (consent, revocation, erasure
  request, membership, votes): the API hands out the exact bytes to sign (`draft`) and relays
  the signed transaction (`submit`); it cannot produce one itself.

The receipt names the CONTRACT transaction (SHA-256 of its canonical bytes, as it appears in
blocks and query answers) and the block height at which f+1 replicas reported it committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from api.http.errors import ApiError
from api.services.outbox import FactReceipt, FactRefused
from ledger_bridge import eventloop, facts, receipts
from ledger_bridge.client import AsyncLedgerClient, LedgerError, Receipt, TcpClientTransport
from ledger_bridge.contracts import codec, tx, vocabulary
from ledger_bridge.crypto import SigningKey, VerifyKey, digest
from ledger_bridge.genesis import GENESIS_FILE, Genesis, load_genesis
from ledger_bridge.height_floor import HeightFloor
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import Block

T = TypeVar("T")

# How long a transaction the vault signs stays valid: long enough to survive a view change
# and a retry, short enough that the contracts' nonce memory stays small.
VAULT_TX_TTL_MS = 5 * 60 * 1000
SUBMIT_TIMEOUT_MS = 20_000


class LedgerUnavailable(ApiError):
    status = 503
    title = "Ledger unavailable"


class LedgerRefused(ApiError):
    """The consent contracts refused the transaction; `code` is the contract's result code."""

    _STATUS: ClassVar[dict[str, int]] = {
        "malformed": 422,
        "invalid": 422,
        "expired": 422,
        "ttl_too_long": 422,
        "bad_signature": 403,
        "not_subject": 403,
        "unauthorized": 403,
        "not_member": 403,
        "not_admitted": 403,
        # governance suspended the member, or moved its membership to another key
        "member_suspended": 403,
        "key_rotated": 403,
        "not_eligible": 403,
        "purpose_not_allowed": 403,
        "exceeds_purpose": 403,  # asks more than the purpose's declaration allows
        "not_found": 404,
        "unknown_subject": 404,  # an access names a key that is no member (or was forgotten)
        # eco-citizen tokens (docs/CONTRACTS.md "Eco-citizen tokens"); the rest, such as
        # duplicate_event, insufficient_tokens and coupon_spent, are 409
        "device_unknown": 404,
        "device_pending": 403,
        "device_suspended": 403,
        "bad_device_signature": 403,
        "unknown_rule": 404,
        "rule_not_for_device": 403,
        "unknown_member": 404,
        "unknown_offer": 404,
        "not_your_offer": 403,
        "unknown_coupon": 404,
        "not_your_coupon": 403,
        # paid access: the consumer's credit does not cover the price; a price other than
        # the one the consumer named is a 409 like any state that may change
        "insufficient_credit": 402,
        "price_mismatch": 409,
        "internal": 502,
    }

    def __init__(self, code: str, message: str) -> None:
        # Contract messages name fields and codes, never values (the contracts guarantee it).
        # Refusals that depend on the cooperative's state (a purpose not approved, a duplicate,
        # a closed vote) are 409: the same request may succeed once that state changes.
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = self._STATUS.get(code, 409)
        self.title = "Refused by the consent contracts"


@dataclass(frozen=True, slots=True)
class LedgerReceipt:
    tx_id: str  # hex SHA-256 of the contract transaction
    block_height: int

    def as_dict(self) -> dict[str, Any]:
        return {"tx_id": self.tx_id, "block_height": self.block_height}


@dataclass(frozen=True, slots=True)
class LedgerAnswer:
    receipt: LedgerReceipt
    result: dict[str, Any]


class LedgerAnswerWithheld(LedgerUnavailable):
    """The transaction was ordered, but the replicas withheld its result: the answer came
    from their reply cache (a retry after late replies) once an erasure was recorded after
    it, and a cached result may name the erased subject."""

    title = "Ledger answer withheld"

    def __init__(self, raw: bytes, receipt: Receipt) -> None:
        super().__init__(
            f"transaction {tx.decode(raw).tx_id.hex()} was ordered at height "
            f"{receipt.block_height}, but "
            "the ledger withheld its result because an erasure was recorded just after it: "
            "read its effect (or its block) before sending anything again"
        )


def _answer(raw: bytes, receipt: Receipt) -> LedgerAnswer:
    """What the contracts answered the ordered transaction `raw`; LedgerRefused if they said
    no, LedgerAnswerWithheld if the replicas no longer say."""
    if receipt.result == m.REDACTED:
        raise LedgerAnswerWithheld(raw, receipt)
    result: dict[str, Any] = codec.decode(receipt.result)
    if not result.get("ok", False):
        raise LedgerRefused(str(result.get("code")), str(result.get("message")))
    return LedgerAnswer(LedgerReceipt(bytes(result["tx"]).hex(), receipt.block_height), result)


# The vault's two ledger identities, in the keys directory: the key that signs its contract
# transactions, and the PBFT client key of the outbox relay (fixed, for the reply cache).
VAULT_KEY_FILE = "vault-ledger.key"
RELAY_KEY_FILE = "vault-relay.key"


def fact_nonce(fact_id: int, request_id: int) -> bytes:
    """The nonce of the transaction that records outbox fact `fact_id` in its submission
    `request_id` (derived, not random: a resubmission after a crash keeps its request id, so
    it is the same transaction to the contracts' replay check). A refused transaction burns
    its nonce, so the DPO's retry of a refused fact, which takes a new request id, needs a
    new nonce too."""
    material = b"civis-outbox-fact:%d:%d" % (fact_id, request_id)
    return hashlib.sha256(material).digest()[: tx.NONCE_BYTES]


def load_or_create_key(path: Path) -> SigningKey:
    """The vault's ledger key (hex seed, 0600), created on first start."""
    from ledger_bridge.genesis import load_signing_key, write_private_file

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, SigningKey.generate().seed().hex().encode())
    return load_signing_key(path)


class LedgerGateway:
    """A pool of PBFT clients on one loop thread; see the module docstring."""

    def __init__(
        self,
        genesis: Genesis,
        vault_key: SigningKey,
        *,
        clients: int = 8,
        relay_key: SigningKey | None = None,
        timeout_ms: int = SUBMIT_TIMEOUT_MS,
        height_floor: HeightFloor | None = None,
    ) -> None:
        """`height_floor`: shared with the other worker processes of the instance (a write
        through one and the read after it through another read the same state); this
        gateway's own when None. The gateway closes it."""
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.vault_key = vault_key
        self.vault_id = bytes(vault_key.public_key)
        self.validators: list[VerifyKey] = genesis.public_keys()
        self._floor = height_floor or HeightFloor()
        self._clients, self._timeout_ms = clients, timeout_ms
        self._lanes: dict[asyncio.AbstractEventLoop, _Lane] = {}
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self._loop = eventloop.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ledger-gateway", daemon=True
        )
        self._thread.start()

        async def build() -> _Lane:
            return self._new_lane()

        main = self._run(build())
        self._transport, self._pool = main.transport, main.pool
        # The relay's client has a fixed identity so a fact resubmitted after a crash, or by
        # another worker (the request id stored in its outbox row) is answered from the
        # replicas' reply cache, never re-executed.
        self._relay = AsyncLedgerClient(
            self._transport,
            self.validators,
            genesis.f,
            relay_key,
            timeout_ms=timeout_ms,
            shared_key=relay_key is not None,
        )
        self._relay_lock = threading.Lock()

    @classmethod
    def from_directory(
        cls,
        ledger_dir: Path,
        keys_dir: Path,
        *,
        clients: int = 8,
        height_floor: HeightFloor | None = None,
    ) -> LedgerGateway:
        """The gateway of `civis-vault up`: genesis in `ledger_dir`, vault keys in `keys_dir`."""
        genesis = load_genesis(ledger_dir / GENESIS_FILE)
        return cls(
            genesis,
            load_or_create_key(keys_dir / VAULT_KEY_FILE),
            relay_key=load_or_create_key(keys_dir / RELAY_KEY_FILE),
            clients=clients,
            height_floor=height_floor,
        )

    @property
    def height_seen(self) -> int:
        """The highest block height this gateway's clients saw committed: no read of it comes
        from below."""
        return self._floor.height

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _new_lane(self) -> _Lane:
        """A transport and a pool of clients for the running loop. TLS pinned to the genesis
        CA; the vault's key proves its right to read (a member with the role `vault` reads
        blocks and every query)."""
        transport = TcpClientTransport.for_genesis(
            self.genesis, self.vault_key, height_floor=self._floor
        )
        pool: asyncio.Queue[AsyncLedgerClient] = asyncio.Queue()
        for _ in range(self._clients):
            pool.put_nowait(
                AsyncLedgerClient(
                    transport, self.validators, self.genesis.f, timeout_ms=self._timeout_ms
                )
            )
        return _Lane(transport, pool)

    async def open_lane(self) -> None:
        """Give the running loop clients of its own, for `submit_from`; the caller closes
        them (`close_lane`) on this loop before the loop ends."""
        if self._closed:
            raise LedgerUnavailable("the ledger gateway is closed")
        loop = asyncio.get_running_loop()
        if loop not in self._lanes:
            self._lanes[loop] = self._new_lane()

    async def close_lane(self) -> None:
        """Close the running loop's clients (`open_lane`), if it has any."""
        lane = self._lanes.pop(asyncio.get_running_loop(), None)
        if lane is not None:
            await lane.close()

    def _borrow(
        self, use: Callable[[AsyncLedgerClient], Awaitable[T]], timeout_s: float | None = None
    ) -> T:
        """Run `use` with a client borrowed from the pool (one request in flight per client)."""
        return self._run(asyncio.wait_for(self._borrowed(use), timeout_s))

    async def _borrowed(self, use: Callable[[AsyncLedgerClient], Awaitable[T]]) -> T:
        client = await self._pool.get()
        try:
            return await use(client)
        finally:
            self._pool.put_nowait(client)

    # -- writing --------------------------------------------------------------------------

    def submit(self, raw: bytes) -> LedgerAnswer:
        """Order a signed contract transaction; raise LedgerRefused if the contracts say no."""

        try:
            receipt = self._borrow(lambda client: client.submit(raw))
        except LedgerError as exc:
            raise LedgerUnavailable(
                f"no quorum of replicas answered: {type(exc).__name__}"
            ) from None
        return _answer(raw, receipt)

    async def submit_from(self, raw: bytes) -> LedgerAnswer:
        """`submit` for a caller on an event loop (an async route), without holding a thread
        while the replicas order: on the clients of that loop's lane (`open_lane`), or else
        through the gateway's thread."""
        if self._closed:
            raise LedgerUnavailable("the ledger gateway is closed")
        lane = self._lanes.get(asyncio.get_running_loop())
        try:
            if lane is None:
                future = asyncio.run_coroutine_threadsafe(
                    self._borrowed(lambda client: client.submit(raw)), self._loop
                )
                receipt = await asyncio.wrap_future(future)
            else:
                client = await lane.pool.get()
                try:
                    receipt = await client.submit(raw)
                finally:
                    lane.pool.put_nowait(client)
        except LedgerError as exc:
            raise LedgerUnavailable(
                f"no quorum of replicas answered: {type(exc).__name__}"
            ) from None
        return _answer(raw, receipt)

    def sign_as_vault(
        self,
        tx_type: str,
        body: dict[str, Any],
        *,
        nonce: bytes | None = None,
        valid_until: int | None = None,
    ) -> tx.SignedTx:
        """The vault's transaction, valid until `valid_until` (ms since the epoch), by default
        VAULT_TX_TTL_MS from now. Signing is deterministic: the same arguments give the same
        bytes, in any process."""
        if valid_until is None:
            valid_until = int(time.time() * 1000) + VAULT_TX_TTL_MS
        return tx.sign(
            self.vault_key, self.chain_id, tx_type, body, valid_until=valid_until, nonce=nonce
        )

    def act(self, tx_type: str, body: dict[str, Any]) -> LedgerAnswer:
        """A transaction the vault signs itself (for a dataset owner or a consumer)."""
        return self.submit(self.sign_as_vault(tx_type, body).encode())

    async def act_from(self, tx_type: str, body: dict[str, Any]) -> LedgerAnswer:
        """`act` for a caller on another event loop (see `submit_from`)."""
        return await self.submit_from(self.sign_as_vault(tx_type, body).encode())

    # -- reading --------------------------------------------------------------------------

    def query(self, q: str, *, timeout_s: float | None = None, **args: Any) -> dict[str, Any]:
        """A read of committed state: {"height", "now", "result"}. With `timeout_s`, a
        TimeoutError after that long (a lookup that must not hold its request longer)."""
        request = codec.encode({"q": q, **args})

        try:
            answer: dict[str, Any] = codec.decode(
                self._borrow(lambda client: client.query(request), timeout_s=timeout_s)
            )
        except LedgerError as exc:
            raise LedgerUnavailable(f"no replica answered: {type(exc).__name__}") from None
        return answer

    def status(self, replica: int) -> dict[str, Any] | None:
        try:
            return self._borrow(lambda client: client.status(replica), timeout_s=2.0)
        except (LedgerError, TimeoutError, OSError):
            return None

    def block(self, height: int, replica: int | None = None) -> Block:
        try:
            return self._borrow(lambda client: client.get_block(height, replica))
        except LedgerError as exc:
            raise LedgerUnavailable(f"block {height}: {type(exc).__name__}") from None

    # -- the outbox relay's sink ----------------------------------------------------------

    def valid_until(self, stored: int | None) -> int:
        """FactSink: `stored` while it leaves twice a submission's timeout to order the
        transaction (one that expires while being ordered is refused, and a refused fact is
        set aside); else VAULT_TX_TTL_MS from now."""
        now = int(time.time() * 1000)
        if stored is not None and stored - now > 2 * self._relay.timeout_ms:
            return stored
        return now + VAULT_TX_TTL_MS

    def record(
        self,
        fact_id: int,
        kind: str,
        payload: dict[str, Any],
        *,
        request_id: int,
        valid_until: int,
    ) -> FactReceipt:
        """FactSink: record a vault fact as its contract transaction, exactly once.

        The nonce is derived from the fact id and its request id, so even if the replicas'
        reply cache has moved on, a second execution is refused as `replayed` and the
        original receipt is looked up by (author, nonce) instead. The transaction is signed
        with exactly `valid_until`, so a resubmission from any process sends the same request.
        """
        tx_type, body = fact_transaction(kind, payload)
        nonce = fact_nonce(fact_id, request_id)
        signed = self.sign_as_vault(tx_type, body, nonce=nonce, valid_until=valid_until)
        with self._relay_lock:
            receipt = self._run(self._relay.submit(signed.encode(), request_id=request_id))
        if receipt.result == m.REDACTED:
            # This request id executed earlier (a retransmission after lost or late replies,
            # a retry after a timeout or a crash) and the replicas withheld its cached result
            # since, because an erasure's block followed (an erasure's own result is withheld
            # as soon as it executes): what it bought is read back by its nonce, as for a
            # spent one, and the request just sent may be the one that committed.
            return self._recorded_earlier(kind, nonce, receipt.request)
        result: dict[str, Any] = codec.decode(receipt.result)
        if result.get("ok"):
            tx_id = bytes(result["tx"])
            sent = receipt.request if signed.tx_id == tx_id else None
            return FactReceipt(
                tx_id.hex(),
                receipt.block_height,
                sent or self._committed_request(kind, receipt.block_height, tx_id),
            )
        if result.get("code") == "replayed":
            # The request just sent executed and was refused: another request spent the nonce.
            return self._recorded_earlier(kind, nonce)
        raise FactRefused(str(result.get("code")), str(result.get("message")))

    def _recorded_earlier(self, kind: str, nonce: bytes, sent: bytes = b"") -> FactReceipt:
        """The receipt of the fact's transaction that an earlier execution committed, found
        by its nonce; FactRefused if that one was refused (a refusal burns its nonce). `sent`
        is the request whose execution that may have been (see `_committed_request`)."""
        seen = self.query("nonce", author=self.vault_id, nonce=nonce)["result"]
        if seen is None:
            raise FactRefused("replayed", "the nonce is spent and its record has expired")
        if "refused" in seen:
            raise FactRefused(str(seen["refused"]), "refused when first ordered")
        height, tx_id = int(seen["height"]), bytes(seen["tx"])
        return FactReceipt(tx_id.hex(), height, self._committed_request(kind, height, tx_id, sent))

    def _committed_request(
        self, kind: str, height: int, tx_id: bytes, sent: bytes = b""
    ) -> bytes | None:
        """The encoded request that carried an erasure fact, when the answer came for an
        earlier execution (a reply cache, a spent nonce) than that of the request just sent;
        None for other facts, which need no receipt, or if no request can be found.

        The block at `height` commits to the digests of its requests, and keeps their bodies
        until a redaction replaces them by those digests, the erasure's own request first
        among them. So `sent`, the request just sent, is the one that committed when its
        digest is in the block and it carries `tx_id` (a request is deterministic: the same
        relay key, request id and transaction give the same bytes, and the outbox stores the
        request id and `valid_until` of a fact's first submission, so a retry from any worker
        process, or after a crash, sends the request that committed); else the body is read
        from the block, gone once redacted: the receipt is lost only when the request sent
        is another one (a `valid_until` renewed for a late retry, a `replayed` answer)."""
        if kind != facts.ERASURE_RECORD:
            return None
        block = self.block(height)
        if sent and _carries(sent, tx_id) and digest(sent) in (block.request_digests() or ()):
            return sent
        return receipts.find_request(block, tx_id)

    def close(self) -> None:
        """Close the clients and connections, the gateway's thread and the floor; after it,
        `open_lane` and `submit_from` refuse (`LedgerUnavailable`)."""
        self._closed = True
        self._close_lanes_left()

        async def shut() -> None:
            await self._relay.close()
            await _Lane(self._transport, self._pool).close()

        # Closing a half-dead connection must not stop the shutdown.
        with contextlib.suppress(Exception):
            self._run(asyncio.wait_for(shut(), 5.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._floor.close()

    def _close_lanes_left(self) -> None:
        """Close the lanes whose apps did not (an app that shares this gateway and still
        serves), each on its own loop while that loop runs; a stopped loop's sockets went
        with it."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop in list(self._lanes):
            lane = self._lanes.pop(loop)
            if loop is here:
                task = loop.create_task(lane.close())
                self._closing.add(task)  # held until done: the loop keeps only a weak one
                task.add_done_callback(self._closing.discard)
            elif loop.is_running():
                with contextlib.suppress(Exception):  # as for the gateway's own, below
                    asyncio.run_coroutine_threadsafe(lane.close(), loop).result(5.0)


@dataclass(frozen=True, slots=True)
class _Lane:
    """A pool of PBFT clients and their connections, all on one event loop."""

    transport: TcpClientTransport
    pool: asyncio.Queue[AsyncLedgerClient]

    async def close(self) -> None:
        while not self.pool.empty():
            await self.pool.get_nowait().close()
        await self.transport.close()


def _carries(request: bytes, tx_id: bytes) -> bool:
    """Whether `request` is an encoded PBFT request carrying the transaction `tx_id`."""
    try:
        msg = m.decode(request)
        return isinstance(msg, m.Request) and tx.decode(msg.tx).tx_id == tx_id
    except (m.RemoteProtocolError, tx.MalformedTx):
        return False


# -- vault facts as contract transactions -----------------------------------------------------


def fact_transaction(kind: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The contract transaction (type, body) that records a vault outbox fact.

    The translation is the fact's own (ledger_bridge/facts.py); what the gateway adds is the
    contracts' list of reasons and requesters, which the stdlib-only facts module cannot
    import. Subject ids go on the ledger as they are: with a ledger, a subject id IS the
    subject's pseudonym (the hex of their wallet key), never a name.
    """
    fact = facts.fact_from_payload(kind, payload)
    if isinstance(fact, facts.ErasureRecord):
        return fact.kind, fact.to_body(
            reasons=vocabulary.ERASURE_REASONS, requesters=vocabulary.REQUESTERS
        )
    return fact.kind, fact.to_body()


def jsonable(value: Any) -> Any:
    """Contract values for JSON: bytes (keys, hashes, tx ids) as hex, the rest as is."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class WrongChain(RuntimeError):
    """The vault database records its facts on another chain than the configured ledger."""


def validators_digest(genesis: Genesis) -> bytes:
    return hashlib.sha256(b"".join(bytes(v.public_key) for v in genesis.validators)).digest()


def bind_database(session: Any, genesis: Genesis) -> None:
    """Bind the database to this chain on first use; refuse any other chain afterwards.

    `session` is a SQLAlchemy session inside a transaction (the caller commits).
    """
    from sqlalchemy.dialects.postgresql import insert

    from vault.models import LedgerBinding

    digest = validators_digest(genesis)
    session.execute(
        insert(LedgerBinding)
        .values(id=1, chain_id=genesis.chain_id, validators_digest=digest)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    bound = session.get(LedgerBinding, 1)
    if bound.chain_id != genesis.chain_id or bytes(bound.validators_digest) != digest:
        raise WrongChain(
            f"this database records its facts on chain {bound.chain_id!r} (bound "
            f"{bound.bound_at:%Y-%m-%d}), not on the configured chain {genesis.chain_id!r} "
            "with these validators; use the database of that chain, or a new database"
        )
