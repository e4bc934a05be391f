"""The consent contracts: the cooperative's rules, executed identically by every PBFT replica.

- `codec`: canonical msgpack (one encoding per value, so signatures and state roots agree).
- `tx`: signed transactions (Ed25519 by the author, a per-author nonce against replay).
- `state`: the whole state as a key-value map with a Merkle root over buckets.
- `rules`: `apply(state, tx, block) -> result`, one handler per transaction type, a module per
  domain (membership, datasets, consent, access, erasure, governance).
- `vocabulary`: the closed sets (roles, colleges, purposes, legal bases...), declared once.
- `bodies`: the shape of every transaction's body.
- `app`: `ConsentApp`, the `ledger_bridge.app.Application` the node runs.
- `queries`: read-only answers from committed state, with the height they reflect.

See docs/CONTRACTS.md for the rules in prose.
"""
