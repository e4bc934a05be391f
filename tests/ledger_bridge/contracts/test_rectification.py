"""Art. 16 rectification on the ledger: the subject's request, the vault's record of it, and
forgetting both. Attacks first: a request in someone else's name, replayed, or for an erased
subject; a record.rectify by a provider, naming unknown or foreign uploads, a replacement that
holds another key or moves the retention day, a key superseded twice, a request closed twice
or in another dataset. Each is refused with the state unchanged (its root the same)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from ledger_bridge.contracts import codec
from ledger_bridge.contracts.app import own_query
from ledger_bridge.crypto import digest
from tests.ledger_bridge.contracts.harness import DAY, T0, Chain, Member, standard
from tests.ledger_bridge.contracts.test_forget import hits

DAY_INDEX = T0 // DAY + 20  # within the datasets' 30 days of retention, with room after it
OLD_KEY = b"\x31" * 32
NEW_KEY = b"\x41" * 32
STATEMENT = digest(b"my address is 5 rue Neuve, not 3 rue Vieille")


@dataclass
class Scene:
    chain: Chain
    provider: Member
    subject: Member
    other: Member  # another subject of the same dataset


def _anchor(chain: Chain, dataset: str, upload: str, *, key: bytes | None, day: int) -> None:
    """An upload anchored with one key (its root is that key's leaf hash), or a shared one."""
    root = b"\x22" * 32 if key is None else digest(b"\x00" + key)
    chain.ok(
        chain.vault,
        "upload.anchor",
        {
            "upload": upload,
            "dataset": dataset,
            "record_count": 2,
            "merkle_root": b"\x11" * 32,
            "key_commitments_root": root,
            "key_commitment_count": 2 if key is None else 1,
            "retention_day": day,
        },
    )


@pytest.fixture()
def scene() -> Scene:
    chain, provider, _ = standard()
    chain.dataset(provider, "d1")
    chain.dataset(provider, "d2")
    _anchor(chain, "d1", "old", key=None, day=DAY_INDEX)
    _anchor(chain, "d1", "new", key=NEW_KEY, day=DAY_INDEX)
    _anchor(chain, "d1", "shared", key=None, day=DAY_INDEX)
    _anchor(chain, "d2", "foreign", key=NEW_KEY, day=DAY_INDEX)
    return Scene(chain, provider, chain.subject(), chain.subject())


def request_body(dataset: str = "d1", record: str = "r-1") -> dict[str, Any]:
    return {"dataset": dataset, "record": record, "statement_hash": STATEMENT}


def rectify_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": "d1",
        "superseded": [{"upload": "old", "key_commitment": OLD_KEY}],
        "replacement": [{"upload": "new", "key_commitment": NEW_KEY}],
    }
    body.update(over)
    return body


def test_the_subject_asks_and_the_vault_closes_the_request(scene: Scene) -> None:
    chain, s = scene.chain, scene.subject
    asked = chain.ok(s, "rectification.request", request_body())
    n = asked["request"]
    [open_] = chain.query(q="rectification_requests")
    assert open_["request"] == n and open_["subject"] == s.subject and open_["status"] == "open"
    assert open_["statement_hash"] == STATEMENT and open_["record"] == "r-1"
    done = chain.ok(chain.vault, "record.rectify", rectify_body(request=n))
    m = done["rectification"]
    assert chain.query(q="rectification_requests") == []
    [mine] = chain.query(q="rectifications", subject=s.subject)
    assert mine["status"] == "done" and mine["rectification"]["rectification"] == m
    assert mine["rectification"]["superseded"] == [{"upload": "old", "key_commitment": OLD_KEY}]
    [by_dataset] = chain.query(q="rectifications", dataset="d1")
    assert by_dataset["request"] == n and by_dataset["replacement"][0]["upload"] == "new"
    assert chain.query(q="rectifications", dataset="d2") == []
    assert chain.query(q="rectification_request", request=n)["status"] == "done"


def test_a_rectification_without_request_and_by_the_dpo(scene: Scene) -> None:
    chain = scene.chain
    done = chain.ok(chain.dpo, "record.rectify", rectify_body())
    assert chain.query(q="rectifications")[0]["rectification"] == done["rectification"]


def test_requests_are_the_subjects_own(scene: Scene) -> None:
    chain = scene.chain
    # a provider, a consumer-like key or the vault cannot ask in a subject's name: the author
    # IS the requester, and only a subject's key may be one
    for who in (scene.provider, chain.vault, chain.dpo):
        before = chain.app.state_root()
        result = chain.one(who, "rectification.request", request_body())
        assert not result["ok"] and result["code"] == "unauthorized", result
        assert chain.query(q="rectification_requests") == []
        assert chain.app.state_root() != before  # only the refused nonce is remembered
    stranger = chain.fresh("subject", "citizens")  # never registered
    result = chain.one(stranger, "rectification.request", request_body())
    assert result["code"] == "not_member", result


def test_a_forged_request_is_refused(scene: Scene) -> None:
    """Signed by one key, claiming another author: the signature does not verify."""
    chain, s = scene.chain, scene.subject
    raw = codec.decode(chain.sign(scene.other, "rectification.request", request_body()))
    raw["author"] = s.pub
    result = chain.block(codec.encode(raw))[0]
    assert result["code"] == "bad_signature", result
    assert chain.query(q="rectification_requests") == []


def test_a_replayed_request_is_refused(scene: Scene) -> None:
    chain, s = scene.chain, scene.subject
    signed = chain.sign(s, "rectification.request", request_body())
    assert chain.block(signed)[0]["ok"]
    assert chain.block(signed)[0]["code"] == "replayed"
    assert len(chain.query(q="rectification_requests")) == 1


def test_an_erased_subject_cannot_ask_and_their_open_request_closes(scene: Scene) -> None:
    chain, s = scene.chain, scene.subject
    n = chain.ok(s, "rectification.request", request_body())["request"]
    erase = {
        "scope": {"kind": "subject", "subject": s.subject, "dataset": "d1"},
        "key_commitments": [OLD_KEY],
        "uploads": [],
        "reason": "dpo_decision",
        "requester": "dpo",
    }
    chain.ok(chain.dpo, "erasure.record", erase)
    assert chain.query(q="rectification_request", request=n)["status"] == "erased"
    assert chain.one(s, "rectification.request", request_body())["code"] == "erased"
    assert chain.one(chain.vault, "record.rectify", rectify_body(request=n))["code"] == "duplicate"


@pytest.mark.parametrize(
    ("why", "over", "code"),
    [
        ("unknown dataset", {"dataset": "nope"}, "not_found"),
        (
            "unknown superseded upload",
            {"superseded": [{"upload": "ghost", "key_commitment": OLD_KEY}]},
            "not_found",
        ),
        (
            "superseded upload of another dataset",
            {"superseded": [{"upload": "foreign", "key_commitment": OLD_KEY}]},
            "mismatch",
        ),
        (
            "replacement not anchored",
            {"replacement": [{"upload": "later", "key_commitment": NEW_KEY}]},
            "not_found",
        ),
        (
            "replacement of another dataset",
            {"replacement": [{"upload": "foreign", "key_commitment": NEW_KEY}]},
            "mismatch",
        ),
        (
            "replacement anchored with another key",
            {"replacement": [{"upload": "new", "key_commitment": b"\x42" * 32}]},
            "mismatch",
        ),
        (
            "replacement holding several keys",
            {"replacement": [{"upload": "shared", "key_commitment": NEW_KEY}]},
            "mismatch",
        ),
        (
            "an upload replacing itself",
            {"replacement": [{"upload": "old", "key_commitment": NEW_KEY}]},
            "invalid",
        ),
        (
            "the same key twice",
            {"superseded": [{"upload": "old", "key_commitment": OLD_KEY}] * 2},
            "invalid",
        ),
        ("a request that does not exist", {"request": 99}, "not_found"),
    ],
)
def test_a_bad_rectification_is_refused_and_changes_nothing(
    scene: Scene, why: str, over: dict[str, Any], code: str
) -> None:
    chain = scene.chain
    before = chain.query(q="rectifications")
    result = chain.one(chain.vault, "record.rectify", rectify_body(**over))
    assert not result["ok"] and result["code"] == code, (why, result)
    assert chain.query(q="rectifications") == before == []
    assert chain.query(q="upload", upload="new")["status"] == "anchored"


def test_only_the_vault_or_the_dpo_records_a_rectification(scene: Scene) -> None:
    chain = scene.chain
    for who in (scene.provider, scene.subject):
        result = chain.one(who, "record.rectify", rectify_body())
        assert result["code"] == "unauthorized", result
    assert chain.query(q="rectifications") == []


def test_a_replacement_keeps_the_retention_day(scene: Scene) -> None:
    chain = scene.chain
    _anchor(chain, "d1", "longer", key=NEW_KEY, day=DAY_INDEX + 5)
    body = rectify_body(replacement=[{"upload": "longer", "key_commitment": NEW_KEY}])
    result = chain.one(chain.vault, "record.rectify", body)
    assert result["code"] == "mismatch" and "retention" in result["message"], result


def test_a_key_is_superseded_and_an_upload_replaces_once(scene: Scene) -> None:
    chain = scene.chain
    chain.ok(chain.vault, "record.rectify", rectify_body())
    assert chain.one(chain.vault, "record.rectify", rectify_body())["code"] == "duplicate"
    _anchor(chain, "d1", "newer", key=NEW_KEY, day=DAY_INDEX)
    again = rectify_body(superseded=[{"upload": "old", "key_commitment": b"\x32" * 32}])
    assert chain.one(chain.vault, "record.rectify", again)["code"] == "duplicate"  # "new" reused
    again["replacement"] = [{"upload": "newer", "key_commitment": NEW_KEY}]
    chain.ok(chain.vault, "record.rectify", again)


def test_a_request_is_closed_once_and_in_its_own_dataset(scene: Scene) -> None:
    chain, s = scene.chain, scene.subject
    n = chain.ok(s, "rectification.request", request_body(dataset="d2"))["request"]
    body = rectify_body(request=n)
    result = chain.one(chain.vault, "record.rectify", body)
    assert result["code"] == "mismatch", result
    assert chain.query(q="rectification_request", request=n)["status"] == "open"


def test_the_subject_reads_only_their_own_rectifications() -> None:
    reader = b"\x01" * 32
    assert own_query({"q": "rectifications", "subject": reader.hex()}, reader)
    assert not own_query({"q": "rectifications", "subject": "ab" * 32}, reader)
    assert not own_query({"q": "rectifications", "dataset": "d1"}, reader)
    assert not own_query({"q": "rectification_requests"}, reader)


def test_forgetting_the_subject_leaves_nothing_naming_them() -> None:
    """Invariant 7: after an erasure everywhere, the requests keep no subject, record or
    statement hash; their transactions are redacted; the control subject stays found."""
    chain, provider, _ = standard()
    chain.dataset(provider, "d1")
    _anchor(chain, "d1", "old", key=None, day=DAY_INDEX)
    _anchor(chain, "d1", "new", key=NEW_KEY, day=DAY_INDEX)
    p = chain.subject()
    positions = {(chain.height, 0)}  # P's registration
    q = chain.subject()
    done = chain.ok(p, "rectification.request", request_body(record="p-record"))["request"]
    positions.add((chain.height, 0))
    chain.ok(p, "rectification.request", request_body(record="p-open"))
    positions.add((chain.height, 0))
    chain.ok(q, "rectification.request", request_body(record="q-record"))
    chain.ok(chain.vault, "record.rectify", rectify_body(request=done))
    before = chain.app.snapshot()
    assert hits(before, p) > 0 and hits(before, q) > 0
    assert b"p-record" in before and b"q-record" in before
    erase = {
        "scope": {"kind": "subject", "subject": p.subject},
        "key_commitments": [NEW_KEY],
        "uploads": [],
        "reason": "subject_request",
        "requester": "subject",
    }
    chain.ok(chain.dpo, "erasure.record", erase)
    positions.add((chain.height, 0))
    after = chain.app.snapshot()
    assert hits(after, p) == 0, "the snapshot still names the erased subject"
    assert b"p-record" not in after and b"p-open" not in after
    assert after.count(STATEMENT) == 1  # Q's request keeps its own (the same text)
    assert hits(after, q) == hits(before, q) and b"q-record" in after  # the control
    assert chain.query(q="rectifications", subject=p.subject) == []
    statuses = [chain.query(q="rectification_request", request=n)["status"] for n in (1, 2)]
    assert statuses == ["done", "erased"]
    [left] = chain.query(q="rectification_requests")
    assert left["subject"] == q.subject
    redacted = {(r["height"], r["index"]) for r in chain.query(q="redactions")}
    assert redacted == positions
    # the rectification record stays: it never named the subject
    assert chain.query(q="rectifications", dataset="d1")[0]["request"] == done
