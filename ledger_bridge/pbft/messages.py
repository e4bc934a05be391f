"""Every PBFT wire message as a frozen dataclass, with one canonical msgpack encoding.

Encoding: a message is the msgpack array `[tag, field_1, ..., field_k]` in dataclass field
order; nested messages are nested arrays of the same shape; integers are non-negative and
below 2**63; bytes are msgpack `bin`. `decode` re-encodes what it parsed and rejects the input
unless the bytes are identical, so every message has exactly one encoding: a signature or a
digest over `encode(msg)` can never be replayed under a different byte string.

Signing: a signed message has `signature` as its last field; its signing bytes are the
encoding of `[tag, field_1, ..., field_{k-1}]` (everything but the signature), prefixed with
a domain string so a signature made for one purpose is never valid for another.

What is signed (Ed25519, see docs/PBFT.md): every message. Requests by the client's key;
everything a replica sends by the replica's validator key. Signatures where MACs would do on
the normal path (PREPARE, STATUS) cost CPU, but they make prepared certificates transferable
in VIEW-CHANGE (TOCS §4.4 with signatures, the OSDI '99 variant) and let any message relayed
by a third replica still prove its author.

Any malformed input raises `RemoteProtocolError` (never another exception type): the caller
drops it and counts it.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgpack

from ledger_bridge.crypto import SigningKey, VerifyKey, digest
from ledger_bridge.pbft.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "Block",
    "Checkpoint",
    "Commit",
    "LocalProtocolError",
    "Message",
    "NewView",
    "Omission",
    "PrePrepare",
    "Prepare",
    "PreparedCert",
    "RemoteProtocolError",
    "Reply",
    "Request",
    "StateData",
    "Status",
    "ViewChange",
    "decode",
    "decode_block",
    "encode",
    "encode_block",
    "make_request",
    "redact_block",
    "sign",
    "signing_bytes",
    "verify_reply",
    "verify_request",
]

# The decoder's hard caps. A NEW-VIEW carries 2f+1 VIEW-CHANGEs, each a window of batches, so
# it can be large; the frame limit a node applies is derived from the cluster's parameters
# (`ClusterConfig.peer_frame_bytes_max`), which must stay under this.
MESSAGE_BYTES_MAX = 512 * 1024 * 1024
TX_BYTES_MAX = 1024 * 1024
INT_MAX = (1 << 63) - 1
LIST_ITEMS_MAX = 100_000
DOMAIN = b"civis-pbft-v1:"

# Field kinds: "int", "bytes", "bool", a message class, or ("list", kind).
Kind = Any


class _Msg:
    TAG: ClassVar[int]
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]]
    SIGNED: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Request(_Msg):
    """A client's transaction (TOCS §4.1 <REQUEST, o, t, c>), signed by the client's key.

    `client_id` is the client's Ed25519 public key; `request_id` plays the paper's timestamp
    `t`: it must grow per client, and a replica executes each (client_id, request_id) once.
    """

    client_id: bytes
    request_id: int
    tx: bytes
    signature: bytes = b""

    TAG: ClassVar[int] = 1
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("client_id", "bytes"),
        ("request_id", "int"),
        ("tx", "bytes"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class PrePrepare(_Msg):
    """<PRE-PREPARE, v, n, d> with the batch inline (TOCS §4.2), signed by the primary.

    `batch_digest` = digest of the canonical encoding of [time_ms, [digest(request)...]];
    `time_ms` is the block time proposed by the primary, checked by backups within
    `block_time_skew_ms` of their own clock. An empty `requests` is a null request (§4.4).
    """

    view: int
    seq: int
    batch_digest: bytes
    time_ms: int
    requests: tuple[Request, ...]
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 2
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("view", "int"),
        ("seq", "int"),
        ("batch_digest", "bytes"),
        ("time_ms", "int"),
        ("requests", ("list", Request)),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class Prepare(_Msg):
    """<PREPARE, v, n, d, i> (TOCS §4.2), sent by backups."""

    view: int
    seq: int
    batch_digest: bytes
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 3
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("view", "int"),
        ("seq", "int"),
        ("batch_digest", "bytes"),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class Commit(_Msg):
    """<COMMIT, v, n, d, i> (TOCS §4.2). 2f+1 of them are a block's commit certificate."""

    view: int
    seq: int
    batch_digest: bytes
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 4
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("view", "int"),
        ("seq", "int"),
        ("batch_digest", "bytes"),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class Reply(_Msg):
    """<REPLY, v, t, c, i, r> (TOCS §4.1) plus the block height the request committed at."""

    view: int
    request_id: int
    client_id: bytes
    replica_id: int
    result: bytes
    block_height: int
    signature: bytes = b""

    TAG: ClassVar[int] = 5
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("view", "int"),
        ("request_id", "int"),
        ("client_id", "bytes"),
        ("replica_id", "int"),
        ("result", "bytes"),
        ("block_height", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class Checkpoint(_Msg):
    """<CHECKPOINT, n, d, i> (TOCS §4.3). `state_digest` covers the app snapshot, the reply
    cache and the chain head; `state_root` is the app's own root, carried for auditors."""

    seq: int
    state_digest: bytes
    state_root: bytes
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 6
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("seq", "int"),
        ("state_digest", "bytes"),
        ("state_root", "bytes"),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class PreparedCert(_Msg):
    """The paper's P_m: a pre-prepare and 2f matching prepares from distinct backups."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]

    TAG: ClassVar[int] = 7
    SIGNED: ClassVar[bool] = False
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("pre_prepare", PrePrepare),
        ("prepares", ("list", Prepare)),
    )


@dataclass(frozen=True, slots=True)
class ViewChange(_Msg):
    """<VIEW-CHANGE, v+1, n, C, P, i> (TOCS §4.4): stable checkpoint `stable_seq` with its
    proof C (2f+1 CHECKPOINTs; empty for the genesis checkpoint 0) and the prepared
    certificates P for sequence numbers above it."""

    new_view: int
    stable_seq: int
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedCert, ...]
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 8
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("new_view", "int"),
        ("stable_seq", "int"),
        ("checkpoint_proof", ("list", Checkpoint)),
        ("prepared", ("list", PreparedCert)),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class NewView(_Msg):
    """<NEW-VIEW, v+1, V, O> (TOCS §4.4). V: 2f+1 VIEW-CHANGEs for the view. O: the new
    primary's PRE-PREPAREs for every sequence number between the highest stable checkpoint in
    V and the highest prepared sequence number in V, each re-proposing the batch of the
    highest-view prepared certificate, or a null request where there is none. Every backup
    recomputes O from V and rejects the message unless it matches exactly."""

    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 9
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("view", "int"),
        ("view_changes", ("list", ViewChange)),
        ("pre_prepares", ("list", PrePrepare)),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class Status(_Msg):
    """Periodic status (Castro's BFT library, TOCS §5.2 "retransmission"): where the sender
    is. From the primary it doubles as the heartbeat; receivers retransmit what the sender
    lacks (log messages, NEW-VIEW, a certified checkpoint for state transfer).

    `suspects`: the sender's view-change timer expired in `view` and it wants view + 1. A
    suspicion binds nothing (no VIEW-CHANGE, no certificates): the sender keeps voting in
    `view`, and sends VIEW-CHANGE only once 2f+1 replicas suspect (see `Replica`)."""

    view: int
    view_active: bool
    suspects: bool
    stable_seq: int
    last_executed: int
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 10
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("view", "int"),
        ("view_active", "bool"),
        ("suspects", "bool"),
        ("stable_seq", "int"),
        ("last_executed", "int"),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class Omission(_Msg):
    """A request of a block whose body the block does not hold: the one at `index` in the
    batch, known by its digest (which the batch digest covers) and by why it is left out:
    the application refused it (`code`, e.g. b"not_member"). Nothing a sender writes
    survives a refusal but its digest, so refused transactions cannot put data in the chain."""

    index: int
    request_digest: bytes
    code: bytes

    TAG: ClassVar[int] = 13
    SIGNED: ClassVar[bool] = False
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("index", "int"),
        ("request_digest", "bytes"),
        ("code", "bytes"),
    )


@dataclass(frozen=True, slots=True)
class Block(_Msg):
    """A committed batch. `height` equals the PBFT sequence number.

    `certificate` holds 2f+1 COMMIT signatures (replica ids in `signers`, same order) over
    (view, height, batch_digest); `batch_digest` is recomputed from `time_ms` and the digests
    of the batch's requests: those of `requests`, the bodies the block holds, and those of
    `omitted`, the requests whose bodies it leaves out, merged by batch position.
    `results_digest` and `state_root` are what the executing replica computed; they are
    covered by the next block's `prev_hash` and, at checkpoints, by 2f+1 CHECKPOINT votes.
    """

    height: int
    view: int
    prev_hash: bytes
    time_ms: int
    batch_digest: bytes
    requests: tuple[Request, ...]
    omitted: tuple[Omission, ...]
    results_digest: bytes
    state_root: bytes
    signers: tuple[int, ...]
    certificate: tuple[bytes, ...]

    TAG: ClassVar[int] = 11
    SIGNED: ClassVar[bool] = False
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("height", "int"),
        ("view", "int"),
        ("prev_hash", "bytes"),
        ("time_ms", "int"),
        ("batch_digest", "bytes"),
        ("requests", ("list", Request)),
        ("omitted", ("list", Omission)),
        ("results_digest", "bytes"),
        ("state_root", "bytes"),
        ("signers", ("list", "int")),
        ("certificate", ("list", "bytes")),
    )

    @property
    def txs(self) -> list[bytes]:
        """The transactions whose bodies the block holds."""
        return [r.tx for r in self.requests]

    @property
    def size(self) -> int:
        """How many requests the batch ordered, bodies held or not."""
        return len(self.requests) + len(self.omitted)

    def request_digests(self) -> list[bytes] | None:
        """Every request's digest in batch order, or None if `omitted` is not a strictly
        increasing set of positions inside the batch."""
        out: list[bytes] = []
        kept = iter(self.requests)
        positions = [o.index for o in self.omitted]
        if positions != sorted(set(positions)) or (positions and positions[-1] >= self.size):
            return None
        omitted = {o.index: o.request_digest for o in self.omitted}
        for i in range(self.size):
            out.append(omitted[i] if i in omitted else request_digest(next(kept)))
        return out

    def header_hash(self) -> bytes:
        """The block's hash (what the next block's `prev_hash` holds). It covers the requests
        through `batch_digest`, and leaves out the certificate and its view: a batch may
        commit in view v at one replica and, re-proposed by NEW-VIEW, in view v+1 at another
        (TOCS §4.4); both certificates prove the same block."""
        header = [
            self.height,
            self.prev_hash,
            self.time_ms,
            self.batch_digest,
            self.results_digest,
            self.state_root,
        ]
        return digest(_pack(header))


@dataclass(frozen=True, slots=True)
class StateData(_Msg):
    """State transfer (TOCS §5.3, simplified to whole snapshots): a stable checkpoint with its
    proof, the snapshot whose digest the proof certifies, and recent blocks up to it."""

    seq: int
    checkpoint_proof: tuple[Checkpoint, ...]
    snapshot: bytes
    blocks: tuple[Block, ...]
    replica_id: int
    signature: bytes = b""

    TAG: ClassVar[int] = 12
    SPEC: ClassVar[tuple[tuple[str, Kind], ...]] = (
        ("seq", "int"),
        ("checkpoint_proof", ("list", Checkpoint)),
        ("snapshot", "bytes"),
        ("blocks", ("list", Block)),
        ("replica_id", "int"),
        ("signature", "bytes"),
    )


Message = (
    Request
    | PrePrepare
    | Prepare
    | Commit
    | Reply
    | Checkpoint
    | PreparedCert
    | ViewChange
    | NewView
    | Status
    | Block
    | StateData
    | Omission
)
_CLASSES: dict[int, type[Any]] = {
    c.TAG: c
    for c in (
        Request,
        PrePrepare,
        Prepare,
        Commit,
        Reply,
        Checkpoint,
        PreparedCert,
        ViewChange,
        NewView,
        Status,
        Block,
        StateData,
        Omission,
    )
}
M = TypeVar("M", bound=_Msg)


# -- encoding ---------------------------------------------------------------------------------
#
# The encoder writes the msgpack array of a message part by part instead of building the nested
# list and packing it: the bytes are the same (msgpack's headers depend only on lengths, and
# each scalar is packed by msgpack itself), but an already-encoded nested Request is reused as
# is. Encoding would be ~20 % of a replica's CPU otherwise: a request is encoded to digest it,
# to sign or verify it, inside its PRE-PREPARE, its block and its log record, at every replica.

_PACKER = msgpack.Packer(use_bin_type=True)  # one reusable packer; autoreset per call


def _pack_scalar(value: Any) -> bytes:
    out: bytes = _PACKER.pack(value)
    return out


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class _RequestBytes:
    """What a process computes about one request, once: its encoding, its signing bytes, its
    digest, and whether its signature verified (a pure function of the request's bytes)."""

    __slots__ = ("digest", "encoded", "signing", "verified")

    def __init__(self, encoded: bytes, signing: bytes) -> None:
        self.encoded = encoded
        self.signing = signing
        self.digest: bytes | None = None
        self.verified = False


# Keyed by the (frozen, hashable) request itself: equal requests have equal bytes. Bounded:
# cleared when full, which costs only recomputation.
_REQUESTS: dict[Request, _RequestBytes] = {}
REQUEST_CACHE_MAX = 65_536


def _request_bytes(req: Request) -> _RequestBytes:
    info = _REQUESTS.get(req)
    if info is None:
        unsigned = _PACKER.pack([Request.TAG, req.client_id, req.request_id, req.tx])
        encoded = b"".join((b"\x95", unsigned[1:], _pack_scalar(req.signature)))
        info = _RequestBytes(encoded, DOMAIN + unsigned)
        if len(_REQUESTS) >= REQUEST_CACHE_MAX:
            _REQUESTS.clear()
        _REQUESTS[req] = info
    return info


# A message's fields as its encoder walks them: runs of scalar fields (ints, bytes, bools and
# lists of them), each packed by msgpack in one call as an array whose header is then cut off
# (a run is under 16 items, so the header is one byte), and the nested messages between them,
# one by one (`_encode`, which reuses cached encodings). The bytes are those of msgpack of the
# nested arrays: a header depends only on a length, and every scalar is packed by msgpack.
_RUN, _MSG, _MSGS = 0, 1, 2
Plan = tuple[tuple[int, Any], ...]


def _plan(spec: tuple[tuple[str, Kind], ...]) -> Plan:
    """The segments of `[tag, *spec fields]`: (_RUN, getter of a tuple of the run's fields,
    the tag first in the run that starts the message), (_MSG, getter), (_MSGS, getter)."""
    segments: list[tuple[int, Any]] = []
    run: list[str] = []

    def close_run(first: bool) -> None:
        if not run and not first:
            return
        assert len(run) + first < 16, "a run's array header must be one byte"
        n = len(run)
        if n == 0:  # the tag alone, before a nested message
            segments.append((_RUN, lambda msg: (msg.TAG,)))
        else:
            # attrgetter of two names or more returns a tuple; the first name again makes two
            get = operator.attrgetter(*(["TAG"] if first else []), *run, run[0])
            segments.append((_RUN, lambda msg: get(msg)[: n + first]))
        run.clear()

    first = True
    for name, kind in spec:
        if _scalar_kind(kind):
            run.append(name)
            continue
        close_run(first)
        first = False
        getter = operator.attrgetter(name)
        segments.append((_MSGS, getter) if isinstance(kind, tuple) else (_MSG, getter))
    close_run(first)
    return tuple(segments)


def _fields(msg: Any, plan: Plan) -> bytes:
    """The tag followed by the encoded fields of `plan` (no array header)."""
    parts: list[bytes] = []
    for what, get in plan:
        if what == _RUN:
            parts.append(_PACKER.pack(get(msg))[1:])  # a tuple packs as an array
        elif what == _MSG:
            parts.append(_encode(get(msg)))
        else:
            items = get(msg)
            parts.append(_array_header(len(items)))
            parts.extend([_encode(v) for v in items])
    return b"".join(parts)


# Encodings of the big composite messages, keyed by object identity (the entry keeps the
# object alive, so the id cannot be reused while cached): a PRE-PREPARE is encoded on the wire,
# inside its prepared certificate and in up to three log records per sequence number. Bounded
# by total bytes; cleared when full, which costs only recomputation.
_COMPOSITES: dict[int, tuple[Any, bytes]] = {}
_composite_bytes = 0
COMPOSITE_CACHE_BYTES_MAX = 64 * 1024 * 1024


def _remember_composite(msg: Any, encoded: bytes) -> None:
    global _composite_bytes
    if _composite_bytes + len(encoded) > COMPOSITE_CACHE_BYTES_MAX:
        _COMPOSITES.clear()
        _composite_bytes = 0
    _COMPOSITES[id(msg)] = (msg, encoded)
    _composite_bytes += len(encoded)


def _scalar_kind(kind: Kind) -> bool:
    return isinstance(kind, str) or (isinstance(kind, tuple) and isinstance(kind[1], str))


def _flat_getters() -> dict[type[Any], tuple[Any, Any]]:
    """For messages whose fields are all scalars or lists of scalars (votes, replies,
    checkpoints, status): getters of (all fields, all but the signature). Their canonical
    encoding is msgpack of `[tag, *fields]`, one call into msgpack's C packer."""
    out: dict[type[Any], tuple[Any, Any]] = {}
    for cls in _CLASSES.values():
        if cls is not Request and all(_scalar_kind(k) for _, k in cls.SPEC):
            names = [name for name, _ in cls.SPEC]
            out[cls] = (operator.attrgetter(*names), operator.attrgetter(*names[:-1]))
    return out


_FLAT = _flat_getters()
# Per class: the plan of every field, and of every field but the signature (`signing_bytes`).
_PLANS: dict[type[Any], tuple[Plan, Plan]] = {
    cls: (_plan(cls.SPEC), _plan(cls.SPEC[:-1])) for cls in _CLASSES.values()
}


def _encode(msg: Any) -> bytes:
    cls = type(msg)
    if cls is Request:
        return _request_bytes(msg).encoded
    flat = _FLAT.get(cls)
    if flat is not None:
        out: bytes = _PACKER.pack([msg.TAG, *flat[0](msg)])
        return out
    composite = cls is PrePrepare or cls is PreparedCert
    if composite:
        hit = _COMPOSITES.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
    out = _array_header(len(msg.SPEC) + 1) + _fields(msg, _PLANS[cls][0])
    if composite:
        _remember_composite(msg, out)
    return out


def _pack(obj: Any) -> bytes:
    """msgpack of nested lists of scalars (a decoded message, a header, a batch's digests):
    packb's bytes through the one packer, without building a packer per call."""
    out: bytes = _PACKER.pack(obj)
    return out


def encode(msg: Message) -> bytes:
    """The canonical bytes of a message (what goes on the wire and into digests)."""
    return _encode(msg)


def signing_bytes(msg: Message) -> bytes:
    """What a signature over `msg` covers: a domain prefix and every field but the signature."""
    if not msg.SIGNED:
        raise LocalProtocolError(f"{type(msg).__name__} is not a signed message")
    if type(msg) is Request:
        return _request_bytes(msg).signing
    flat = _FLAT.get(type(msg))
    if flat is not None and msg.SIGNED:
        body: bytes = _PACKER.pack([msg.TAG, *flat[1](msg)])
        return DOMAIN + body
    return DOMAIN + _array_header(len(msg.SPEC)) + _fields(msg, _PLANS[type(msg)][1])


def sign(msg: M, key: SigningKey) -> M:
    """`msg` with its signature field set."""
    cls: Any = type(msg)
    fields = [getattr(msg, name) for name, _ in cls.SPEC[:-1]]
    signed: M = cls(*fields, key.sign(signing_bytes(msg)))  # type: ignore[arg-type]
    return signed


def _from_obj(obj: Any, kind: Kind) -> Any:
    if isinstance(kind, tuple):
        if not isinstance(obj, list) or len(obj) > LIST_ITEMS_MAX:
            raise RemoteProtocolError("expected a bounded list")
        return tuple(_from_obj(v, kind[1]) for v in obj)
    if isinstance(kind, type):
        return _msg_from_obj(obj, expected=kind)
    if kind == "int":
        if type(obj) is not int or not 0 <= obj <= INT_MAX:
            raise RemoteProtocolError("expected a non-negative integer")
        return obj
    if kind == "bool":
        if type(obj) is not bool:
            raise RemoteProtocolError("expected a boolean")
        return obj
    if kind == "bytes":
        if type(obj) is not bytes:
            raise RemoteProtocolError("expected bytes")
        return obj
    raise LocalProtocolError(f"unknown field kind {kind!r}")


def _scalar_fields() -> dict[type[Any], tuple[type, ...]]:
    """For messages whose fields are all scalars (votes, checkpoints, status, omissions): the
    Python type each field must have, so `_msg_from_obj` checks a vote in one pass over its
    fields instead of dispatching on each field's kind; the same checks as `_from_obj`."""
    types = {"int": int, "bytes": bytes, "bool": bool}
    return {
        cls: tuple(types[kind] for _, kind in cls.SPEC)
        for cls in _CLASSES.values()
        if all(isinstance(kind, str) for _, kind in cls.SPEC)
    }


_SCALAR_FIELDS = _scalar_fields()


def _scalars_ok(values: list[Any], types: tuple[type, ...]) -> bool:
    for v, t in zip(values, types, strict=True):
        if t is int:
            if type(v) is not int or not 0 <= v <= INT_MAX:
                return False
        elif type(v) is not t:
            return False
    return True


def _msg_from_obj(obj: Any, expected: type[Any] | None = None) -> Any:
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("a message is a non-empty array starting with its tag")
    cls = _CLASSES.get(obj[0])
    if cls is None:
        raise RemoteProtocolError("unknown message tag")
    if expected is not None and cls is not expected:
        raise RemoteProtocolError("unexpected nested message type")
    if len(obj) != len(cls.SPEC) + 1:
        raise RemoteProtocolError("wrong number of fields")
    types = _SCALAR_FIELDS.get(cls)
    if types is not None:
        fields = obj[1:]
        if _scalars_ok(fields, types):
            return cls(*fields)
        # A bad field: the general path names it in its error.
    return cls(*(_from_obj(v, kind) for v, (_, kind) in zip(obj[1:], cls.SPEC, strict=True)))


def decode(data: bytes) -> Message:
    """Parse one message; `RemoteProtocolError` on anything malformed or non-canonical."""
    if not isinstance(data, bytes | bytearray) or len(data) > MESSAGE_BYTES_MAX:
        raise RemoteProtocolError("message too large or not bytes")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MESSAGE_BYTES_MAX,
            max_str_len=1024,
            max_array_len=LIST_ITEMS_MAX,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception:  # msgpack raises a zoo of types (ExtraData, ValueError, ...)
        raise RemoteProtocolError("not a msgpack document") from None
    msg: Message = _msg_from_obj(obj)
    # Once the fields have their kinds, `obj` holds only ints, bytes, bools and lists, and
    # the canonical encoding of `msg` is by definition msgpack of `obj`: re-pack it in C
    # rather than re-encode the message in Python (a third of a client's CPU per reply).
    raw = bytes(data)
    if _pack(obj) != raw:
        raise RemoteProtocolError("non-canonical encoding")
    if type(msg) is PrePrepare:
        _remember_composite(msg, raw)
    return msg


def encode_block(block: Block) -> bytes:
    return encode(block)


def decode_block(data: bytes) -> Block:
    msg = decode(data)
    if not isinstance(msg, Block):
        raise RemoteProtocolError("not a block")
    return msg


# -- requests and replies -----------------------------------------------------------------------


def make_request(key: SigningKey, request_id: int, tx: bytes) -> Request:
    """A signed client request."""
    return sign(Request(bytes(key.public_key), request_id, tx), key)


def verify_request(req: Request) -> bool:
    """The client's signature is valid and the request is within size limits. Verified once
    per process: a request seen from the client, then inside a PRE-PREPARE, then in a block,
    costs one Ed25519 verification."""
    if len(req.tx) > TX_BYTES_MAX:
        return False
    info = _request_bytes(req)
    if info.verified:
        return True
    try:
        key = VerifyKey(req.client_id)
    except ValueError:
        return False
    info.verified = key.verify(info.signing, req.signature)
    return info.verified


def request_digest(req: Request) -> bytes:
    info = _request_bytes(req)
    if info.digest is None:
        info.digest = digest(info.encoded)
    return info.digest


# The `Omission.code` of a body removed after the fact, because the application ordered it
# forgotten (a subject's erasure), as opposed to a body refused at execution.
REDACTED = b"redacted"
# The `Omission.code` of a request ordered again after it was executed (the reply cache says
# so, the same on every replica): it changes nothing, and a body kept for it would escape
# redaction, which lists only the positions of executed transactions.
DUPLICATE = b"duplicate"


def redact_block(block: Block, indices: Iterable[int]) -> tuple[Block, int]:
    """`block` with the bodies at batch `indices` replaced by their digests (`Omission` with
    code `REDACTED`), and how many bodies that removed. The batch digest covers the
    requests' digests only, so the block's hash and certificate still verify. An index
    already left out, or outside the batch, changes nothing; a block with nothing to remove
    is returned as it is."""
    wanted = set(indices)
    held: dict[int, Request] = {}
    left_out = {o.index for o in block.omitted}
    kept = iter(block.requests)
    for i in range(block.size):
        if i not in left_out:
            held[i] = next(kept)
    gone = sorted(i for i in wanted if i in held)
    if not gone:
        return block, 0
    omitted = list(block.omitted)
    omitted += [Omission(i, request_digest(held[i]), REDACTED) for i in gone]
    omitted.sort(key=operator.attrgetter("index"))
    requests = tuple(r for i, r in sorted(held.items()) if i not in wanted)
    return dataclasses.replace(block, requests=requests, omitted=tuple(omitted)), len(gone)


def batch_digest(time_ms: int, requests: tuple[Request, ...]) -> bytes:
    """The digest a PRE-PREPARE and a block commit to: block time plus the request digests."""
    return digests_batch_digest(time_ms, [request_digest(r) for r in requests])


def digests_batch_digest(time_ms: int, request_digests: Sequence[bytes]) -> bytes:
    """`batch_digest` from the requests' digests alone: a block that leaves some bodies out
    still proves which requests it ordered."""
    return digest(_pack([time_ms, list(request_digests)]))


def verify_reply(reply: Reply, validators: Sequence[VerifyKey]) -> bool:
    """The reply is signed by the validator it names."""
    if not 0 <= reply.replica_id < len(validators):
        return False
    return validators[reply.replica_id].verify(signing_bytes(reply), reply.signature)


# Memo of successful verifications: a pure function's cache, so the core stays deterministic.
# Ed25519 verification dominates the CPU profile; one process hosting several replicas (the
# simulator, in-process tests) then verifies a broadcast once, not once per recipient, and a
# retransmitted message is not re-verified. Keyed by the exact (key, bytes, signature).
_VERIFIED: dict[tuple[bytes, bytes, bytes], None] = {}
VERIFIED_CACHE_MAX = 16_384


def _verify_cached(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    memo = (bytes(key), message, signature)
    if memo in _VERIFIED:
        return True
    if not key.verify(message, signature):
        return False
    if len(_VERIFIED) >= VERIFIED_CACHE_MAX:
        _VERIFIED.clear()
    _VERIFIED[memo] = None
    return True


def verify_signed(msg: Message, keys: Sequence[VerifyKey]) -> bool:
    """A replica message is signed by the replica named in its `replica_id` field."""
    rid = getattr(msg, "replica_id", -1)
    if type(rid) is not int or not 0 <= rid < len(keys):
        return False
    return _verify_cached(keys[rid], signing_bytes(msg), getattr(msg, "signature", b""))
