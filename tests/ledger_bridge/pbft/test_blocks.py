"""verify_chain checks a chain with the validator public keys alone."""

from __future__ import annotations

import dataclasses

from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import block_hash, verify_chain
from tests.ledger_bridge.pbft.harness import Net, key, request


def _chain() -> tuple[Net, list[m.Block]]:
    net = Net()
    for i in range(3):
        net.submit(request(1, client=key(50 + i)))
        net.deliver_all()
    return net, [net.blocks[1][h] for h in (1, 2, 3)]


def test_a_committed_chain_verifies() -> None:
    net, chain = _chain()
    keys = list(net.config.public_keys)
    assert verify_chain(chain, keys)
    assert verify_chain(chain[1:], keys, anchor=block_hash(chain[0]))
    assert not verify_chain(chain[1:], keys, anchor=b"\1" * 32)


def test_tampering_is_detected() -> None:
    net, chain = _chain()
    keys = list(net.config.public_keys)
    b = chain[1]
    other_req = request(9, client=key(77))
    cases = {
        "swapped request": dataclasses.replace(b, requests=(other_req,)),
        "broken link": dataclasses.replace(b, prev_hash=b"\0" * 32),
        "too few signers": dataclasses.replace(
            b, signers=b.signers[:2], certificate=b.certificate[:2]
        ),
        "duplicated signer": dataclasses.replace(
            b, signers=(b.signers[0],) * 3, certificate=(b.certificate[0],) * 3
        ),
        "forged signature": dataclasses.replace(
            b, certificate=(b.certificate[0], b.certificate[1], bytes(64))
        ),
        "signature moved to another signer": dataclasses.replace(
            b, signers=(b.signers[1], b.signers[0], b.signers[2])
        ),
        "wrong view in certificate": dataclasses.replace(b, view=b.view + 1),
        "unsigned request": dataclasses.replace(
            b,
            requests=(dataclasses.replace(b.requests[0], tx=b"evil"),),
        ),
    }
    for what, bad in cases.items():
        assert not verify_chain([chain[0], bad, chain[2]], keys), what
    assert not verify_chain([chain[0], chain[2]], keys), "gap"
