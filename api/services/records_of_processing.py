"""GDPR Art. 30(1) records of processing, generated, never hand-kept: the controller's record
(its contact details and its DPO's, transfers), the dataset registry, the recipients from the
ledger, and the security measures the running system actually has.

Art. 30(1), field by field, and where each comes from:
(a) controller, representative, DPO: `ControllerRecord`, set at founding (`civis-vault up
    --controller-name ...`) or by `civis-vault controller set`: why a database row and not the
    genesis, see vault/models.py;
(b) purposes: each dataset's registered purposes;
(c) categories of subjects and of data: the residents whose pseudonymous wallets the dataset's
    records are filed under; the dataset's registered category;
(d) recipients: the consumers an access actually delivered someone's data to (the ledger's
    access records say so, the vault's registry does not know it);
(e) transfers to third countries: none unless configured in `ControllerRecord.transfers`;
(f) time limits for erasure: each dataset's retention, enforced by key destruction;
(g) security measures: derived from this process's settings and the chain's genesis (the KEK
    provider, PBFT's n and f, TLS), not written by hand.
Plus the ledger's own processing: what the replicas hold, for how long, and what an erasure
makes them forget. A field the controller must give and did not is listed in `missing` and is
a finding of the DPO's audit (vault/audit.py `processing_record_findings`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator
from sqlalchemy.orm import Session

from api.http.errors import ApiError
from api.services.access_log import AccessScan
from api.services.directory import names
from api.services.documents import Document
from ledger_bridge.contracts.vocabulary import RESIDENT_COLLEGE
from ledger_bridge.genesis import Genesis
from vault import audit
from vault.config import VaultSettings
from vault.models import ControllerRecord

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway

RECIPIENTS_SCAN_MAX = 100_000


class Party(BaseModel):
    name: str
    address: str = ""
    email: str = ""
    phone: str = ""


class Transfer(BaseModel):
    """Art. 30(1)(e), Art. 44-49: personal data sent outside the EU/EEA."""

    recipient: str = Field(min_length=1, max_length=200)
    # Either may be recorded before it is known: the DPO's audit then reports it missing.
    country: str = Field(default="", max_length=100)
    safeguard: str = Field(
        default="",
        max_length=300,
        description="the Art. 46 safeguard or Art. 49 derogation (e.g. an adequacy decision, "
        "standard contractual clauses)",
    )


class ControllerIn(BaseModel):
    """What `civis-vault controller set` writes: the controller's record (Art. 30(1)(a),(e))."""

    name: str = Field(min_length=1, max_length=200)
    address: str = Field(default="", max_length=500)
    email: str = Field(default="", max_length=200)
    phone: str = Field(default="", max_length=50)
    representative: str = Field(default="", max_length=500)
    dpo_name: str = Field(default="", max_length=200)
    dpo_email: str = Field(default="", max_length=200)
    dpo_phone: str = Field(default="", max_length=50)
    timezone: str = Field(
        default="UTC",
        max_length=64,
        description="where the controller is (IANA, e.g. Europe/Paris): the subjects' "
        "requests are due by its days",
    )
    transfers: list[Transfer] = Field(default_factory=list, max_length=50)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("an IANA time zone, such as Europe/Paris or UTC") from None
        return value


class Recipient(BaseModel):
    consumer: str = Field(description="hex public key of the consumer (a registered member)")
    name: str | None = Field(
        default=None, description="the consumer's name in the members' directory, if named"
    )
    purposes: list[str]
    accesses: int = Field(description="accesses that delivered at least one subject")


class Measure(BaseModel):
    """A security measure (Art. 32) and what it was derived from."""

    measure: str
    detail: str
    source: str = Field(description="where the record read it: a setting, the genesis, the code")


class LedgerProcessing(BaseModel):
    """What the ledger's replicas process: each is hosted by a member of its college."""

    chain_id: str | None
    replicas: int | None
    faults_tolerated: int | None = Field(description="PBFT's f: crashed or Byzantine replicas")
    colleges: list[str] = Field(description="the college hosting each replica, in order")
    holds: list[str]
    never_holds: str
    retention: str
    on_erasure: str


class ProcessingRecord(BaseModel):
    dataset_id: str
    name: str
    provider: str = Field(description="the member that registered the dataset (its source)")
    category_of_data: str
    categories_of_subjects: list[str]
    purposes: list[str]
    legal_basis: str
    retention: str
    retention_days: int
    security_measures: str
    uploads: int
    records: int
    recipients: list[Recipient]


class RecordsOfProcessing(BaseModel):
    generated_at: dt.datetime
    controller: Party | None = Field(description="Art. 30(1)(a); null until set")
    representative: str = Field(description="Art. 27 representative, where applicable")
    dpo: Party | None = Field(description="the data protection officer; null until set")
    transfers: list[Transfer] = Field(description="outside the EU/EEA; empty: none")
    security_measures: list[Measure]
    ledger_processing: LedgerProcessing
    missing: list[str] = Field(description="Art. 30 fields to set (an audit finding each)")
    recipients_read: bool = Field(description="false when the ledger could not be read")
    recipients_complete: bool = Field(
        description=f"false when the ledger holds more than {RECIPIENTS_SCAN_MAX} accesses and "
        "only the first were read (or it could not be read)"
    )
    records: list[ProcessingRecord]


def controller_record(session: Session) -> ControllerRecord | None:
    return session.get(ControllerRecord, 1)


def set_controller(session: Session, details: ControllerIn, *, only_if_unset: bool = False) -> bool:
    """Write the controller's record (one row); returns whether it wrote. `only_if_unset`
    (the founding): leave a record already set alone."""
    row = session.get(ControllerRecord, 1, with_for_update=True)
    if row is not None and only_if_unset:
        return False
    values = details.model_dump()
    values["transfers"] = [t.model_dump() for t in details.transfers]
    if row is None:
        session.add(ControllerRecord(id=1, **values))
    else:
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = dt.datetime.now(dt.UTC)
    session.flush()
    return True


def _recipients(gateway: LedgerGateway) -> tuple[dict[str, list[Recipient]], bool]:
    per: dict[str, dict[bytes, tuple[set[str], int]]] = defaultdict(dict)
    scan = AccessScan(gateway, scan_max=RECIPIENTS_SCAN_MAX)
    for row in scan:
        if not row["granted"]:
            continue  # nobody's data left the vault: not a recipient
        purposes, n = per[row["dataset"]].get(row["consumer"], (set(), 0))
        purposes.add(row["purpose"])
        per[row["dataset"]][row["consumer"]] = (purposes, n + 1)
    out = {
        dataset: [
            Recipient(consumer=c.hex(), purposes=sorted(p), accesses=n)
            for c, (p, n) in sorted(consumers.items())
        ]
        for dataset, consumers in per.items()
    }
    return out, scan.exhausted


def _key_measure(settings: VaultSettings) -> Measure:
    if settings.key_provider == "pkcs11":
        detail = (
            f"every secret is wrapped by a key-encryption key held in the PKCS#11 token "
            f"'{settings.pkcs11_token_label}'; the KEK never leaves the HSM"
        )
    else:
        detail = (
            "every secret is wrapped by a key-encryption key derived from the local master key "
            f"file {settings.resolved_master_key_path} (mode 0600, refused if readable by others)"
        )
    return Measure(
        measure="Key protection",
        detail=detail,
        source=f"setting key_provider={settings.key_provider}",
    )


def _ledger_measures(genesis: Genesis | None) -> list[Measure]:
    if genesis is None:
        return [
            Measure(
                measure="Consent ledger",
                detail="no ledger configured: no access is decided or recorded by the contracts",
                source="no genesis",
            )
        ]
    tls = (
        "mutual TLS between replicas and clients, pinned to the chain's own CA"
        if genesis.tls_ca is not None
        else "plain TCP: the genesis names no TLS CA"
    )
    return [
        Measure(
            measure="Consent ledger",
            detail=f"{genesis.n} PBFT replicas, one per college, tolerating {genesis.f} faulty "
            f"(crashed or Byzantine); each block carries {2 * genesis.f + 1} replica signatures; "
            "every access is decided by the consent contracts and recorded",
            source=f"genesis of chain {genesis.chain_id}",
        ),
        Measure(measure="Ledger transport", detail=tls, source="genesis tls_ca"),
    ]


def security_measures(settings: VaultSettings, genesis: Genesis | None) -> list[Measure]:
    """Art. 32 measures as this process and this chain run them."""
    sweep = getattr(settings, "sweep_interval_s", None)
    sweeps = f"every {sweep:g} s and at start" if sweep is not None else "by `retention sweep`"
    database = (
        "an external PostgreSQL (CIVIS_DATABASE_URL): its encryption at rest and backups are "
        "its operator's"
        if settings.database_url
        else f"the embedded PostgreSQL under {settings.data_dir} (development only)"
    )
    return [
        Measure(
            measure="Record encryption",
            detail="AES-256-GCM with a key per (upload, subject) derived by HKDF-SHA256 from "
            "three destroyable secrets (upload, subject, retention day), never stored; the "
            "associated data binds record, dataset, upload and key version",
            source="vault/crypto, vault/keyring.py",
        ),
        _key_measure(settings),
        Measure(
            measure="Erasure by key destruction",
            detail="an erasure destroys the subject's secret in each dataset in one transaction "
            "with its ciphertext, so copies in backups, WAL and dead tuples stop decrypting; "
            "the ledger records which key commitments were destroyed and forgets the pseudonym",
            source="vault/erasure.py",
        ),
        Measure(
            measure="Retention",
            detail=f"each retention day has its own secret, destroyed after the day ends: the "
            f"sweeper runs {sweeps}",
            source="setting sweep_interval_s",
        ),
        *_ledger_measures(genesis),
        Measure(
            measure="Access control",
            detail="API keys of 256-bit secrets stored as SHA-256, one role each; the DPO's "
            "page behind a server-side session cookie (HttpOnly, Secure, SameSite=Strict)",
            source="api/services/keys.py, api/services/dpo_sessions.py",
        ),
        Measure(measure="Database", detail=database, source="setting database_url"),
    ]


def ledger_processing(genesis: Genesis | None) -> LedgerProcessing:
    return LedgerProcessing(
        chain_id=None if genesis is None else genesis.chain_id,
        replicas=None if genesis is None else genesis.n,
        faults_tolerated=None if genesis is None else genesis.f,
        colleges=[] if genesis is None else [v.college for v in genesis.validators],
        holds=[
            "members' public keys (subjects' pseudonyms among them), roles and colleges",
            "the dataset registry: owner, category, purposes, retention, legal basis",
            "upload anchors: Merkle roots and key-commitment roots, never a record or a key",
            "consents: subject pseudonym, consumer, purpose, disclosure mode, validity",
            "access decisions: consumer, purpose, the pseudonyms granted and refused",
            "erasure and expiry records: the key commitments destroyed",
            "governance proposals and votes; eco-citizen token events and balances",
        ],
        never_holds="record payloads, keys, names, addresses or any other plaintext data",
        retention="every replica keeps the whole chain for the cooperative's life (a new or "
        "lagging replica copies it); the contracts' state changes only by transactions",
        on_erasure="an erasure everywhere makes the contracts forget the pseudonym (no state "
        "entry names it) and every replica blank the stored transactions that named it, "
        "keeping their digests so the chain still verifies; the subject's receipt alone "
        "proves the erasure was theirs",
    )


def _parties(row: ControllerRecord | None) -> tuple[Party | None, Party | None]:
    if row is None:
        return None, None
    controller = Party(name=row.name, address=row.address, email=row.email, phone=row.phone)
    dpo = Party(name=row.dpo_name, email=row.dpo_email, phone=row.dpo_phone)
    return controller, dpo if row.dpo_name or row.dpo_email else None


def records_of_processing(
    session: Session,
    settings: VaultSettings,
    gateway: LedgerGateway | None,
    *,
    genesis: Genesis | None = None,
) -> RecordsOfProcessing:
    """The whole Art. 30(1) record; recipients need `gateway` (without one, or with the
    ledger unreachable, they are left out and `recipients_read` says so)."""
    recipients: dict[str, list[Recipient]] = {}
    read = complete = False
    if gateway is not None:
        genesis = gateway.genesis
        try:
            recipients, complete = _recipients(gateway)
            read = True
        except ApiError:  # LedgerUnavailable: the rest of the record still stands
            pass
    known = names(session, {r.consumer for rs in recipients.values() for r in rs})
    for listed in recipients.values():
        for r in listed:
            r.name = known.get(r.consumer)
    row = controller_record(session)
    controller, dpo = _parties(row)
    subjects = [f"residents of the cooperative ({RESIDENT_COLLEGE} college), by pseudonym"]
    return RecordsOfProcessing(
        generated_at=dt.datetime.now(dt.UTC),
        controller=controller,
        representative="" if row is None else row.representative,
        dpo=dpo,
        transfers=[] if row is None else [Transfer(**t) for t in row.transfers],
        security_measures=security_measures(settings, genesis),
        ledger_processing=ledger_processing(genesis),
        missing=audit.processing_record_gaps(session),
        recipients_read=read,
        recipients_complete=complete,
        records=[
            ProcessingRecord(
                **entry,
                categories_of_subjects=subjects,
                recipients=recipients.get(entry["dataset_id"], []),
            )
            for entry in audit.records_of_processing(session)
        ],
    )


# -- as a document (Markdown, PDF) ------------------------------------------------------------


def _party_line(party: Party | None) -> str:
    if party is None:
        return "not set"
    parts = [party.name, party.address, party.email, party.phone]
    return ", ".join(p for p in parts if p) or "not set"


def _dataset_section(doc: Document, r: ProcessingRecord) -> None:
    doc.heading(2, f"{r.name} (dataset {r.dataset_id})")
    recipients = [
        f"{x.name + ' (' + x.consumer + ')' if x.name else x.consumer}: {', '.join(x.purposes)} "
        f"({x.accesses} access(es) that delivered data)"
        for x in r.recipients
    ]
    doc.bullets(
        [
            f"Purposes (b): {', '.join(r.purposes)}; legal basis: {r.legal_basis}",
            f"Categories of data subjects (c): {'; '.join(r.categories_of_subjects)}",
            f"Categories of personal data (c): {r.category_of_data}",
            f"Recipients (d): {len(r.recipients)} consumer(s)"
            + (f": {'; '.join(recipients)}" if recipients else ""),
            f"Time limit for erasure (f): {r.retention}",
            f"Source: provider {r.provider}; {r.uploads} upload(s), {r.records} record(s)",
        ]
    )


def processing_document(record: RecordsOfProcessing) -> Document:
    """The Art. 30(1) record as a document the DPO reads and files."""
    doc = Document("Records of processing activities (GDPR Art. 30(1))")
    doc.para(
        f"Generated {record.generated_at:%Y-%m-%d %H:%M} UTC from the vault's registry, "
        "the ledger and the running system's settings."
    )
    if record.missing:
        doc.para("Incomplete: " + ", ".join(record.missing) + " (civis-vault controller set).")
    doc.heading(1, "Controller and data protection officer (a)")
    doc.bullets(
        [
            f"Controller: {_party_line(record.controller)}",
            f"Representative (Art. 27): {record.representative or 'none'}",
            f"Data protection officer: {_party_line(record.dpo)}",
        ]
    )
    doc.heading(1, "Transfers to third countries or international organisations (e)")
    if record.transfers:
        doc.bullets(f"{t.recipient} in {t.country}, under {t.safeguard}" for t in record.transfers)
    else:
        doc.para("None: no transfer outside the EU/EEA is configured.")
    doc.heading(1, "Processing activities, one per dataset")
    if not record.records:
        doc.para("No dataset is registered.")
    for r in record.records:
        _dataset_section(doc, r)
    if not record.recipients_read:
        doc.para("Recipients could not be read from the ledger: the lists above are empty.")
    elif not record.recipients_complete:
        doc.para(f"Recipients were read from the first {RECIPIENTS_SCAN_MAX} accesses only.")
    doc.heading(1, "Technical and organisational security measures (g)")
    doc.bullets(f"{m.measure}: {m.detail} [{m.source}]" for m in record.security_measures)
    _ledger_section(doc, record.ledger_processing)
    return doc


def _ledger_section(doc: Document, ledger: LedgerProcessing) -> None:
    doc.heading(1, "The ledger's own processing")
    if ledger.replicas is None:
        doc.para("No ledger is configured.")
        return
    doc.para(
        f"Chain {ledger.chain_id}: {ledger.replicas} replicas hosted by the colleges "
        f"{', '.join(ledger.colleges)}, tolerating {ledger.faults_tolerated} faulty. "
        f"They hold:"
    )
    doc.bullets(ledger.holds)
    doc.bullets(
        [
            f"Never: {ledger.never_holds}",
            f"For how long: {ledger.retention}",
            f"On erasure: {ledger.on_erasure}",
        ]
    )
