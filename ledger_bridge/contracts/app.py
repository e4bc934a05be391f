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

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import codec, queries, rules
from ledger_bridge.contracts.state import State

if TYPE_CHECKING:
    from ledger_bridge.genesis import Genesis

DEFAULT_COLLEGES = ("providers", "services", "citizens")
DEFAULT_PURPOSES = (
    "proof-of-address",
    "road-maintenance",
    "billing",
    "service-improvement",
    "research",
)


class GenesisInvalid(ValueError):
    """The `[app_genesis]` table does not describe a valid founding state."""


def founding_state(
    chain_id: str,
    validators: Sequence[tuple[bytes, str]],
    app_genesis: dict[str, Any],
) -> State:
    """The state before block 1: colleges, founding members, approved purposes."""
    colleges = list(app_genesis.get("colleges", DEFAULT_COLLEGES))
    resident = app_genesis.get("resident_college", "citizens")
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
        if len(key) != 32 or role not in rules.ROLES or college not in colleges:
            raise GenesisInvalid(f"founding member with role {role!r}: bad key or college")
        if state.has("member", key):
            raise GenesisInvalid("a key appears twice among the founding members")
        rules.admit(state, key, role, college, 0, 0)
    state.put(
        "meta",
        "validators",
        [{"public_key": k, "college": col} for k, col in validators],
    )
    for purpose in app_genesis.get("purposes", DEFAULT_PURPOSES):
        if not isinstance(purpose, str) or not rules._NAME.match(purpose):
            raise GenesisInvalid("a founding purpose is malformed")
        state.put("purpose", purpose, 0)
    return state


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

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> ConsentApp:
        validators = [(bytes(v.public_key), v.college) for v in genesis.validators]
        return cls(genesis.chain_id, validators, genesis.app_genesis)

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        rules.begin_block(self.state, block)
        results = [codec.encode(rules.apply(self.state, raw, self.chain_id)) for raw in txs]
        return results, self.state.root()

    def query(self, request: bytes) -> bytes:
        return codec.encode(queries.answer(self.state, codec.decode(request, max_bytes=4096)))

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
