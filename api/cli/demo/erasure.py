"""Erasure: the DPO erases a driver whose readings the road service has read; nothing of them
is readable again, the ledger shows the erasure (or, once redacted, its digest), and the
driver's wallet keeps the receipt and never signs as the erased pseudonym again."""

from __future__ import annotations

from typing import Any

from api.cli.demo.common import DemoFailed, Story, receipt_text
from api.cli.demo.road_maintenance import FIELDS, FLEET, PURPOSE, ROADS, sensor_csv
from api.cli.demo.stage import Party, Stage
from api.client import ErasureCertificate, NotFound, public_hex
from api.client.wallet import WalletError
from ledger_bridge.crypto import digest


def play(stage: Stage) -> None:
    """A driver of a dataset of its own, read once with consent, then erased by the DPO."""
    fleet, roads = stage.entities(FLEET, ROADS)
    dataset = stage.dataset(fleet, "vehicle-trips", "vehicle-telemetry", PURPOSE)
    driver = stage.new_subject(
        f"the driver Bruno-{stage.run_id}", stage.wallet("Bruno"), dataset, "the fleet's trips"
    )
    csv = sensor_csv(stage.run_id, [driver])
    stage.upload(fleet, dataset, "text/csv", csv, f"two trip readings (CSV) of {driver.name}")
    stage.consent(driver, roads, dataset, PURPOSE)
    with stage.doing("the road service reading the trips"):
        out = roads.api.access(dataset, PURPOSE, fields=FIELDS)
    stage.check(len(out["records"]) == 2, f"the road service should read 2 readings: {out}")
    stage.tell(
        f"the road service reads {driver.name}'s {len(out['records'])} readings "
        f"{receipt_text(out['receipt'])}"
    )
    cert = _erase(stage, driver)
    _wallet_keeps(stage, driver, dataset, dict(cert))
    assert cert["receipt"] is not None  # checked by _erase; for the type checker
    _the_ledger_shows_it(stage, cert)
    _unreadable(stage, driver, roads, dataset)
    _after_erasure(stage, driver, cert["receipt"]["block_height"])


def _erase(stage: Stage, driver: Party) -> ErasureCertificate:
    with stage.doing(f"the DPO erasing {driver.name}"):
        cert = stage.dpo.api.erase(subject_id=driver.id)
    receipt = cert["receipt"]
    stage.check(
        cert["state"] == "recorded" and cert["secrets_destroyed"] >= 1 and receipt is not None,
        f"the erasure certificate should be recorded with destroyed keys: {cert}",
    )
    stage.tell(
        f"the DPO erases {driver.name}'s pseudonym {driver.id[:12]}… everywhere (no dataset "
        f"named): certificate {cert['erasure_id']}, "
        f"{cert['secrets_destroyed']} key(s) destroyed, {len(cert['key_commitments'])} key "
        f"commitment(s) published, state {cert['state']} {receipt_text(receipt)}"
    )
    return cert


def _wallet_keeps(stage: Stage, driver: Party, dataset: str, certificate: dict[str, Any]) -> None:
    """The subject's wallet keeps the receipt and never signs as the erased pseudonym again."""
    assert driver.wallet is not None  # a citizen's Party carries her wallet
    try:
        following = driver.wallet.record_erasure(dataset, certificate)
    except WalletError as exc:
        raise DemoFailed(f"{driver.name}'s wallet recording the erasure: {exc}") from None
    stage.check(following.public_key != driver.key.public_key, "the generation did not rise")
    stage.tell(
        f"{driver.name}'s wallet keeps the certificate's receipt and raises the dataset's "
        f"generation to {driver.wallet.generation(dataset)}: joining it again would be as "
        f"{public_hex(following)[:12]}…, never as the erased pseudonym"
    )


def _the_ledger_shows_it(stage: Stage, cert: ErasureCertificate) -> None:
    receipt = cert["receipt"]
    assert receipt is not None  # checked by _erase; for the type checker
    with stage.doing("reading the erasure's block"):
        block = stage.dpo.api.block(receipt["block_height"])
    proof = cert.get("erasure_receipt")
    stage.check(proof is not None, "the erasure's answer should carry the subject's receipt")
    assert proof is not None  # checked above; for the type checker
    # Once a checkpoint covers it, the replicas keep only the digest of each transaction
    # naming the forgotten pseudonym, the erasure's own included: the receipt's request
    # hashes to one of them. Before that the block still holds the transaction itself.
    request_digest = digest(bytes.fromhex(proof["request"])).hex()
    redacted = [o for o in block["omitted"] if o["request_digest"] == request_digest]
    held = [t["type"] for t in block["transactions"] if t["tx_id"] == receipt["tx_id"]]
    stage.check(
        block["verified"] and (held == ["erasure.record"] or len(redacted) == 1),
        f"the erasure's block should verify and hold the erasure or its digest: {held}",
    )
    shown = (
        "keeps only its digest, which the driver's receipt opens"
        if redacted
        else "holds the erasure.record transaction (its digest alone once redacted)"
    )
    stage.tell(
        f"the ledger shows it: block {block['height']} (commit certificate verified, "
        f"{len(block['certificate']['signers'])} signers) {shown}"
    )


def _unreadable(stage: Stage, driver: Party, roads: Party, dataset: str) -> None:
    with stage.doing("the road service asking for the erased driver"):
        try:
            roads.api.access(dataset, PURPOSE, subjects=[driver.id], fields=FIELDS)
        except NotFound as exc:
            refusal = exc
        else:
            raise DemoFailed("the road service's access naming the erased driver was answered")
    # Forgotten everywhere, the pseudonym is no member: the access is refused whole, so its
    # body, which names the pseudonym, never enters a block.
    stage.check(
        refusal.code == "unknown_subject",
        f"the access naming the erased driver should be refused unknown_subject: {refusal}",
    )
    stage.tell(
        f"the road service asks for {driver.name}'s pseudonym again: refused "
        f"({refusal.code}), and the ledger keeps only the request's digest"
    )


def _after_erasure(stage: Stage, driver: Party, erased_at: int) -> None:
    with stage.doing("the DPO exporting the erased driver's data"):
        export = stage.dpo.api.export(driver.id)
    stage.check(
        export["records"] == [],
        f"the export should hold no readable record: {len(export['records'])}",
    )
    with stage.doing("reading the DPO's access log"):
        log = list(stage.dpo.api.iter_access_log(subject=driver.id))
    # Lines that delivered the driver's data (a line filtered by subject lists only them
    # in `granted`); none once the ledger forgot the pseudonym, whose accesses no longer
    # name it, and none after the erasure in any case.
    delivered = [a["height"] for a in log if driver.id in a["granted"]]
    stage.check(
        all(h < erased_at for h in delivered),
        f"the access log should show deliveries to {driver.name} only before block "
        f"{erased_at}: {delivered}",
    )
    stage.tell(
        f"the subject export now holds {len(export['records'])} readable records, and the "
        f"ledger names the pseudonym in {len(export['erasures'])} erasure record(s) (the "
        "wallet's receipt proves the erasure either way); the DPO's access log shows "
        f"{len(delivered)} accesses that delivered {driver.name}'s data, all before the "
        f"erasure (block {erased_at}), none since"
    )


STORY = Story("erasure", "Erasure: the DPO erases a citizen; unreadable, and on the ledger", play)
