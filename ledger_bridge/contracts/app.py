"""`ConsentApp`: the consent contracts as the application the PBFT replicas execute.

Built from the genesis (chain id, validators, the `[app_genesis]` table) so every replica
starts from the same state root: the cooperative's colleges, its founding members (each
validator in its college, the vault operator, the DPO) and the purposes approved at founding.

`execute` applies a committed block; `query` answers from committed state (docs/CONTRACTS.md
lists the queries); `snapshot`/`restore` carry the whole state for state transfer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ledger_bridge.app import BlockContext, Redaction
from ledger_bridge.contracts import bodies, codec, disclosure, queries, rules
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import (
    DEFAULT_COLLEGES,
    EVENT_PURPOSE,
    READ_ALL_ROLES,
    RESIDENT_COLLEGE,
    ROLES,
)
from ledger_bridge.contracts.vocabulary import DEFAULT_PURPOSES as DEFAULT_PURPOSES

if TYPE_CHECKING:
    from ledger_bridge.genesis import Genesis

# What the founding purposes may disclose (docs/CONTRACTS.md "Disclosure"), for the stories
# they serve: a bank learns whether a citizen lives at an address, by equality only and a few
# times a day; a road service reads where and when a vehicle shook, never who drove it;
# billing reads whole records. Research and service improvement are approved but declare
# nothing: they disclose nothing until governance declares what they need.
FOUNDING_DECLARATIONS: dict[str, dict[str, Any]] = {
    "proof-of-address": {
        "fields": ["address"],
        "modes": ["predicate"],
        "operators": ["eq"],
        "questions": 10,
        "period_days": 1,
    },
    "road-maintenance": {
        "fields": ["recorded_at", "lat", "lon", "vibration"],
        "modes": ["projection"],
        "operators": [],
        "questions": 0,
        "period_days": 1,
    },
    "billing": {
        "fields": [],
        "modes": ["full"],
        "operators": [],
        "questions": 0,
        "period_days": 1,
    },
    # the eco-citizen events' records, projected for the metropolis's aggregates (who and
    # exactly when stay out: the API counts subjects per cell and suppresses small cells)
    EVENT_PURPOSE: {
        "fields": ["district", "week", "km", "litres", "euros"],
        "modes": ["projection"],
        "operators": [],
        "questions": 0,
        "period_days": 1,
    },
}


# Transactions a key may send before it is a member: registering is how it becomes one.
OPEN_TX_TYPES = frozenset({"member.register"})
# Admission remembers what it found in recent transactions' bytes, up to this much of them
# (a request is at most `request_bytes_max`; the memory is cleared when full).
CHECKED_BYTES_MAX = 32 * 1024 * 1024


def own_query(q: Any, reader: bytes) -> bool:
    """Whether query `q` asks only about `reader`: a consumer's accesses (`consumer` is its
    key), a subject's consents, accesses, erasures, rectifications or restrictions (`subject`
    is its key in hex), a token account's balance or statement (`account`), a partner's
    redemptions (`partner`), or a member's credit statement (`member` is its key)."""
    if not isinstance(q, dict):
        return False
    kind = q.get("q")
    if kind == "accesses" and "subject" not in q:
        return q.get("consumer") == reader
    if kind in ("accesses", "consents", "erasures", "rectifications", "restrictions"):
        return q.get("subject") == reader.hex()
    if kind in ("balance", "token_statement"):  # a token account: the key, or its hex
        return q.get("account") in (reader, reader.hex())
    if kind == "redemptions":
        return q.get("partner") == reader
    if kind == "statement":  # a provider's or consumer's own credit statement
        return q.get("member") == reader
    return False


def _refusal(code: str, message: str) -> bytes:
    return codec.encode(rules.error(code, message))


class GenesisInvalid(ValueError):
    """The `[app_genesis]` table does not describe a valid founding state."""


def founding_state(
    chain_id: str,
    validators: Sequence[tuple[bytes, str]],
    app_genesis: dict[str, Any],
) -> State:
    """The state before block 1: colleges, founding members, approved purposes."""
    colleges = list(app_genesis.get("colleges", DEFAULT_COLLEGES))
    resident = app_genesis.get("resident_college", RESIDENT_COLLEGE)
    if not colleges or resident not in colleges or len(set(colleges)) != len(colleges):
        raise GenesisInvalid("colleges must be distinct and include the resident college")
    state = State()
    state.put("meta", "chain_id", chain_id)
    state.put("meta", "colleges", colleges)
    state.put("meta", "resident_college", resident)
    state.put("meta", "now", 0)
    state.put("meta", "height", 0)
    state.put("meta", "seq", 0)
    state.put("meta", "validators", [])
    founders: list[tuple[bytes, str, str]] = [(k, "validator", col) for k, col in validators]
    for row in app_genesis.get("members", []):
        try:
            key = bytes.fromhex(row["public_key"])
            role, college = row["role"], row["college"]
        except (KeyError, TypeError, ValueError):
            raise GenesisInvalid(
                "a founding member needs public_key (hex), role, college"
            ) from None
        founders.append((key, role, college))
    for key, role, college in founders:
        if len(key) != 32 or role not in ROLES or college not in colleges:
            raise GenesisInvalid(f"founding member with role {role!r}: bad key or college")
        if state.has("member", key):
            raise GenesisInvalid("a key appears twice among the founding members")
        rules.admit(state, key, role, college, 0, 0)
    state.put(
        "meta",
        "validators",
        [{"public_key": k, "college": col} for k, col in validators],
    )
    default = [{"purpose": p, **FOUNDING_DECLARATIONS.get(p, {})} for p in DEFAULT_PURPOSES]
    for entry in app_genesis.get("purposes", default):
        _found_purpose(state, entry)
    return state


def _found_purpose(state: State, entry: Any) -> None:
    """A founding purpose: a name (approved, declaring nothing), or a table with `purpose`
    and, optionally, the fields of a declaration (bodies.DECLARATION)."""
    if isinstance(entry, str):
        entry = {"purpose": entry}
    purpose = entry.get("purpose") if isinstance(entry, dict) else None
    if not isinstance(purpose, str) or not rules.NAME.fullmatch(purpose):
        raise GenesisInvalid("a founding purpose is malformed")
    state.put("purpose", purpose, 0)
    raw = {k: v for k, v in entry.items() if k != "purpose"}
    if not raw:
        return
    try:
        bodies.check_kind(bodies.DECLARATION, raw)
        state.put("purpose_terms", purpose, disclosure.declaration(raw))
    except ValueError as exc:  # BodyError is one
        raise GenesisInvalid(f"founding purpose {purpose}: {exc}") from None


class ConsentApp:
    """Implements `ledger_bridge.app.Application` with the consent contracts."""

    def __init__(
        self,
        chain_id: str = "civis-local",
        validators: Sequence[tuple[bytes, str]] = (),
        app_genesis: dict[str, Any] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.state = founding_state(chain_id, validators, app_genesis or {})
        # Admission's findings from a transaction's bytes alone (`_static`), and the refusal
        # codes of the last executed block's results (`refusal_code`).
        self._checked: dict[bytes, tuple[txmod.SignedTx | None, bytes | None, bytes | None]] = {}
        self._checked_bytes = 0
        self._refusals: dict[bytes, bytes] = {}

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> ConsentApp:
        validators = [(bytes(v.public_key), v.college) for v in genesis.validators]
        return cls(genesis.chain_id, validators, genesis.app_genesis)

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        rules.begin_block(self.state, block)
        self._refusals.clear()
        results = []
        for i, raw in enumerate(txs):
            outcome = rules.apply(self.state, raw, self.chain_id, block.position(i))
            result = codec.encode(outcome)
            if outcome.get("ok") is False:
                self._refusals[result] = str(outcome.get("code", "refused")).encode()[:64]
            results.append(result)
        return results, self.state.root()

    def check(self, raw: bytes) -> bytes | None:
        """Admission before ordering (CometBFT's CheckTx): the refusal, encoded as a result,
        of a transaction that cannot succeed whatever it is ordered after (malformed, a bad
        signature, expired, a spent nonce, from a key that is no member or that governance
        replaced by another, a body of the wrong shape), or None, in the order `apply` would
        find them. A transaction refused here is never put in a block; `apply` decides again
        at execution. Only what stays refused as time passes is checked: the state's clock is
        the last block's, which may be long ago on an idle chain, so "too far ahead" is left
        to execution. A suspended member passes: a reinstatement may come first."""
        tx, early, shape = self._static(raw)
        if tx is None or early is not None:
            return early
        now: int = self.state.get("meta", "now")
        if tx.valid_until < now:
            return _refusal("expired", "valid_until has passed")
        if self.state.has("nonce", rules.nonce_id(tx.author, tx.nonce)):
            return _refusal("replayed", "this author already used this nonce")
        member = self.state.get("member", tx.author)
        if tx.type not in OPEN_TX_TYPES and member is None:
            return _refusal("not_member", "not a registered member")
        if member is not None and member["status"] == "rotated":
            # for ever: governance moved the membership to another key (rotate_member_key)
            return _refusal("key_rotated", "governance moved this membership to another key")
        return shape

    def _static(self, raw: bytes) -> tuple[txmod.SignedTx | None, bytes | None, bytes | None]:
        """What admission finds in the bytes alone (decoding, the signature, the body's
        shape), once per transaction: a request waiting for a batch is checked again after
        every block, and only its reading of the state can have changed."""
        known = self._checked.get(raw)
        if known is not None:
            return known
        try:
            tx = txmod.decode(raw)
        except txmod.MalformedTx as exc:
            found: tuple[txmod.SignedTx | None, bytes | None, bytes | None] = (
                None,
                _refusal("malformed", str(exc)),
                None,
            )
        else:
            early = None
            if not tx.verify(self.chain_id):
                early = _refusal(
                    "bad_signature", "the signature does not verify for this author and chain"
                )
            shape = None
            try:
                bodies.check(tx.type, tx.body)  # a body of the wrong shape is refused for ever
            except bodies.BodyError as exc:
                shape = _refusal("invalid", str(exc))
            found = (tx, early, shape)
        if self._checked_bytes + len(raw) > CHECKED_BYTES_MAX:
            self._checked.clear()
            self._checked_bytes = 0
        self._checked[raw] = found
        self._checked_bytes += len(raw)
        return found

    def refusal_code(self, result: bytes) -> bytes | None:
        """The code of a refused transaction's result (what its block keeps), or None. Read
        from what `execute` noted, so a result is not decoded again (an access's result
        lists every subject it granted)."""
        return self._refusals.get(result)

    def query(self, request: bytes) -> bytes:
        return codec.encode(queries.answer(self.state, codec.decode(request, max_bytes=4096)))

    def may_read(self, reader: bytes, request: bytes | None) -> bool:
        """Read rights on the replica client port: an active member with the role `vault`,
        `dpo` or `validator` reads blocks and every query; any other key reads only the
        queries naming it (`own_query`), and no block (blocks name everyone)."""
        member = self.state.get("member", reader)
        if member is not None and member["status"] == "active" and member["role"] in READ_ALL_ROLES:
            return True
        if request is None:
            return False
        try:
            q = codec.decode(request, max_bytes=4096)
        except Exception:  # a malformed query is nobody's own
            return False
        return own_query(q, reader)

    def redactions(self, after: int, limit: int) -> list[Redaction]:
        """The redaction entries n > `after` (at most `limit`), in order: the stored
        transactions the contracts forgot a subject from (rules.forget)."""
        last: int = self.state.get("meta", "next_redaction") or 0
        after = max(after, 0)
        out = []
        for n in range(after + 1, min(last, after + max(limit, 0)) + 1):
            height, index, since = self.state.get("redaction", n)
            out.append(Redaction(n, height, index, since))
        return out

    def redacted_at(self, height: int) -> frozenset[int]:
        """The batch indices of block `height` whose transactions are forgotten."""
        return frozenset(
            self.state.get("redaction", n)[1]
            for (n,) in self.state.group("redaction", "height", height)
        )

    def state_root(self) -> bytes:
        return self.state.root()

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def freeze(self) -> Callable[[], bytes]:
        return self.state.freeze()

    def restore(self, snapshot: bytes, expected_root: bytes | None = None) -> None:
        state = State.restore(snapshot)
        if state.get("meta", "chain_id") != self.chain_id:
            raise ValueError("snapshot is from another chain")
        if expected_root is not None and state.root() != expected_root:
            raise ValueError("snapshot does not have the expected state root")
        self.state = state
