"""Datasets and their uploads: a provider (or the vault on its behalf) registers a dataset for
approved purposes, then anchors each upload's roots with the retention day it expires after,
which may not be later than the dataset's registered retention allows from the block's day."""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules.common import DAY_MS, Ctx, Reject, approved_purpose, dataset_of


def owner_or_vault(c: Ctx, owner: bytes) -> None:
    """The author must be the owner, an admitted provider, or the vault acting for it.

    The vault's anchor of an upload stands while the owner is suspended: the vault accepted
    the records before the vote, or re-keys a subject there on the DPO's order (Art. 16), and
    an upload left unanchored would hold records no consumer may read and no audit matches."""
    if c.tx.author == owner:
        c.active(owner, "provider")
    else:
        c.active(c.tx.author, "vault")


def dataset_register(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    dataset: str = body["dataset"]
    owner: bytes = body["owner"]
    purposes: list[str] = body["purposes"]
    if c.tx.author != owner:
        c.active(c.tx.author, "vault")
    c.active(owner, "provider")
    for p in purposes:
        approved_purpose(c, p)
    if c.state.has("dataset", dataset):
        raise Reject("exists", f"dataset {dataset} is already registered")
    c.state.put(
        "dataset",
        dataset,
        {
            "owner": owner,
            "category": body["category"],
            "purposes": sorted(purposes),
            "retention_days": body["retention_days"],
            "legal_basis": body["legal_basis"],
            "height": c.height,
        },
    )
    return {"ok": True, "dataset": dataset}


def upload_anchor(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    upload: str = body["upload"]
    dataset_id: str = body["dataset"]
    day: int = body["retention_day"]
    dataset = dataset_of(c, dataset_id)
    owner_or_vault(c, dataset["owner"])
    if c.state.has("upload", upload):
        raise Reject("exists", f"upload {upload} is already anchored")
    # The dataset's registered retention (as governance last set it) bounds what an upload may
    # promise to keep, counted from the anchoring block's day: the vault cannot keep records
    # longer than the cooperative allowed, whatever its own copy of the period says.
    if day > c.now // DAY_MS + dataset["retention_days"]:
        raise Reject(
            "retention_exceeded",
            "the retention day is later than the dataset's registered retention allows "
            "from this block's day",
        )
    c.state.put(
        "upload",
        upload,
        {
            "dataset": dataset_id,
            "record_count": body["record_count"],
            "merkle_root": body["merkle_root"],
            "key_commitments_root": body["key_commitments_root"],
            "key_commitment_count": body["key_commitment_count"],
            "retention_day": day,
            "deadline": (day + 1) * DAY_MS,
            "status": "anchored",
            "height": c.height,
        },
    )
    c.state.put("dataset_upload", dataset_id, upload, c.height)
    return {"ok": True, "upload": upload, "deadline": (day + 1) * DAY_MS}
