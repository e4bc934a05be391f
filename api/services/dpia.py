"""The data protection impact assessment (GDPR Art. 35), drafted from what the vault knows, for
the DPO to complete and sign: `civis-vault dpia` and `GET /v1/dpo/dpia?format=md|pdf`.

Why drafted, not written: Art. 35(7) asks for (a) a systematic description of the processing
and its purposes, (b) an assessment of its necessity and proportionality, (c) an assessment of
the risks to the subjects' rights and freedoms and (d) the measures that address them. The
vault knows (a) and (d) exactly (the dataset registry, the recipients on the ledger, the
measures the running system has: api/services/records_of_processing.py), and the facts (c)
rests on: categories, recipients, retention, disclosure modes, the register's figures. What it
cannot know (why a retention is necessary, how likely and severe a harm is, the subjects' views,
the DPO's advice) it asks, with a blank to fill, and the document ends with the DPO's
signature. Every figure is as of `generated_at`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from api.http.errors import ApiError
from api.services.documents import Document
from api.services.records_of_processing import (
    ProcessingRecord,
    RecordsOfProcessing,
    records_of_processing,
)
from api.services.requests import RegisterSummary, register_summary
from ledger_bridge.genesis import Genesis
from vault import audit
from vault.config import VaultSettings

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway

# What each legal basis (Art. 6(1)) must show, as the DPO assesses necessity.
_BASIS = {
    "consent": "consent is given per consumer, dataset and purpose, signed by the subject's own "
    "wallet key, and revocable at any moment: the consent contracts refuse every access from "
    "the block after a revocation (Art. 7(3))",
    "contract": "the processing must be necessary for a contract with the subject or steps "
    "they asked for before one (Art. 6(1)(b))",
    "legal_obligation": "name the law that obliges the processing (Art. 6(1)(c), 6(3))",
    "vital_interests": "only where no other basis can apply (recital 46)",
    "public_task": "name the task in the public interest or official authority and its legal "
    "basis (Art. 6(1)(e), 6(3)); subjects may object (Art. 21)",
    "legitimate_interests": "record the balancing test of the interest against the subjects' "
    "rights (Art. 6(1)(f)); subjects may object (Art. 21)",
}
LONG_RETENTION_DAYS = 365


def purpose_declarations(gateway: LedgerGateway | None) -> dict[str, dict[str, Any] | None]:
    """Each approved purpose's declaration as the ledger holds it; empty if not read."""
    if gateway is None:
        return {}
    try:
        listed = gateway.query("purposes")["result"]
    except ApiError:  # LedgerUnavailable: the document says the declarations were not read
        return {}
    return {str(p["purpose"]): p.get("declaration") for p in listed}


def build_dpia(
    session: Session,
    settings: VaultSettings,
    gateway: LedgerGateway | None,
    *,
    genesis: Genesis | None = None,
) -> Document:
    """The DPIA draft from the vault's database, this process's settings and the ledger (when
    `gateway` reaches it; else from `genesis` alone, recipients and declarations unread)."""
    now = dt.datetime.now(dt.UTC)
    record = records_of_processing(session, settings, gateway, genesis=genesis)
    findings = [f.detail for f in audit.accountability_findings(session, now)]
    return dpia_document(
        record, register_summary(session, now), purpose_declarations(gateway), findings
    )


def dpia_document(
    record: RecordsOfProcessing,
    register: RegisterSummary,
    declarations: dict[str, dict[str, Any] | None],
    findings: Iterable[str],
) -> Document:
    """The DPIA draft; `declarations` are the ledger's purpose declarations (what each purpose
    may disclose), `findings` the DPO audit's accountability findings at generation."""
    who = record.controller.name if record.controller is not None else "controller not set"
    doc = Document(f"Data protection impact assessment (GDPR Art. 35): {who}")
    doc.para(
        f"Draft generated {record.generated_at:%Y-%m-%d %H:%M} UTC by Civis Vault from its "
        "dataset registry, its consent ledger and the security measures the running system "
        "has. The data protection officer completes the blanks, gives their advice and signs."
    )
    _context(doc, record)
    _description(doc, record, declarations)
    _necessity(doc, record, register, declarations)
    _risks(doc, record, register, declarations)
    _measures(doc, record, list(findings))
    _sign_off(doc)
    return doc


def _context(doc: Document, record: RecordsOfProcessing) -> None:
    doc.heading(1, "1. Context")

    def line(party: Any) -> str:
        if party is None:
            return "not set (civis-vault controller set)"
        return ", ".join(p for p in (party.name, party.address, party.email, party.phone) if p)

    doc.bullets(
        [
            f"Controller: {line(record.controller)}",
            f"Data protection officer: {line(record.dpo)}",
            f"Representative (Art. 27): {record.representative or 'none'}",
        ]
    )
    if record.missing:
        doc.para("The records of processing lack: " + ", ".join(record.missing) + ".")


def _disclosure(purpose: str, declarations: dict[str, dict[str, Any] | None]) -> str:
    if not declarations:
        return f"{purpose}: not read (no ledger answered)"
    d = declarations.get(purpose)
    if d is None:
        return f"{purpose}: discloses nothing until governance declares it"
    fields = ", ".join(d.get("fields") or []) or "every field"
    return f"{purpose}: {' or '.join(d.get('modes') or [])} ({fields})"


def _dataset(doc: Document, r: ProcessingRecord, declarations: dict[str, Any]) -> None:
    doc.heading(2, f"Dataset {r.name}")
    consumers = ", ".join(f"{x.consumer[:16]}… ({', '.join(x.purposes)})" for x in r.recipients)
    doc.bullets(
        [
            f"Personal data: category {r.category_of_data}; {r.records} record(s) in "
            f"{r.uploads} upload(s), provided by member {r.provider[:16]}…",
            f"Data subjects: {'; '.join(r.categories_of_subjects)}",
            f"Purposes and legal basis: {', '.join(r.purposes)}; {r.legal_basis}",
            "What each purpose may disclose: "
            + "; ".join(_disclosure(p, declarations) for p in r.purposes),
            f"Recipients so far: {len(r.recipients)}" + (f": {consumers}" if consumers else ""),
            f"Retention: {r.retention}",
        ]
    )


def _description(
    doc: Document, record: RecordsOfProcessing, declarations: dict[str, dict[str, Any] | None]
) -> None:
    doc.heading(1, "2. Systematic description of the processing (Art. 35(7)(a))")
    doc.para(
        "Data providers upload records about residents, each filed under the resident's "
        "pseudonym (a wallet public key, one per dataset). The vault encrypts every record "
        "and keeps it off the ledger. A consumer receives records, named fields or yes/no "
        "answers only when the consent contracts, run by one ledger replica per college of "
        "the cooperative, find a consent of the subject in force for that consumer, dataset "
        "and purpose; each decision is recorded on the ledger. Subjects read, export and "
        "erase their data; the DPO audits accesses, retention and the ledger."
    )
    if not record.records:
        doc.para("No dataset is registered yet.")
    for r in record.records:
        _dataset(doc, r, declarations)
    ledger = record.ledger_processing
    doc.heading(2, "The ledger")
    if ledger.replicas is None:
        doc.para("No ledger is configured: no access is decided or recorded by the contracts.")
    else:
        doc.para(
            f"The {ledger.replicas} replicas of chain {ledger.chain_id} hold: "
            + "; ".join(ledger.holds)
            + f". Never: {ledger.never_holds}. For how long: {ledger.retention}. On erasure: "
            f"{ledger.on_erasure}."
        )
    doc.heading(2, "Transfers outside the EU/EEA")
    if record.transfers:
        doc.bullets(f"{t.recipient} in {t.country}, under {t.safeguard}" for t in record.transfers)
    else:
        doc.para("None configured.")
    doc.blank("Processing not described above (manual handling, processors, hosting, backups):", 3)


def _necessity(
    doc: Document,
    record: RecordsOfProcessing,
    register: RegisterSummary,
    declarations: dict[str, dict[str, Any] | None],
) -> None:
    doc.heading(1, "3. Necessity and proportionality (Art. 35(7)(b))")
    doc.heading(2, "Lawfulness")
    bases = sorted({r.legal_basis for r in record.records})
    doc.bullets(f"{b}: {_BASIS.get(b, 'assess')}" for b in bases)
    doc.blank("For each purpose, why the processing is necessary for it:", 3)
    doc.heading(2, "Data minimisation")
    full = sorted(
        {p for r in record.records for p in r.purposes if "full" in _modes(p, declarations)}
    )
    doc.para(
        "A purpose discloses the narrowest it can: yes/no answers (predicate), named fields "
        "(projection) or whole records (full); the contracts enforce the consent's mode. "
        + (
            f"Purposes that may disclose whole records: {', '.join(full)}."
            if full
            else "No purpose in use discloses whole records."
        )
    )
    doc.heading(2, "Storage limitation")
    doc.bullets(f"{r.name}: {r.retention_days} days" for r in record.records)
    doc.blank("Why each retention period is necessary for its purposes:", 2)
    doc.heading(2, "The subjects' rights (Art. 12 to 21)")
    doc.para(
        "Every request is registered with its deadline (one month, three if extended with "
        "reasons) and its outcome; the DPO's audit reports any answered late or still overdue."
    )
    doc.bullets(_register_lines(register))


def _modes(purpose: str, declarations: dict[str, dict[str, Any] | None]) -> list[str]:
    declared = declarations.get(purpose) or {}
    return list(declared.get("modes") or [])


def _register_lines(register: RegisterSummary) -> list[str]:
    lines = [
        f"{kind}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        for kind, states in sorted(register.by_kind.items())
    ]
    lines.append(
        f"Overdue now: {register.overdue}; answered after their deadline: {register.answered_late}"
    )
    return lines


def _risk(doc: Document, title: str, facts: str, measures: list[str]) -> None:
    doc.heading(2, title)
    doc.para(facts)
    doc.bullets(f"Measure: {m}" for m in measures)
    doc.blank("Likelihood, severity and residual risk (low / medium / high), and why:", 2)


def _risks(
    doc: Document,
    record: RecordsOfProcessing,
    register: RegisterSummary,
    declarations: dict[str, dict[str, Any] | None],
) -> None:
    doc.heading(1, "4. Risks to the rights and freedoms of data subjects (Art. 35(7)(c))")
    consumers = {x.consumer for r in record.records for x in r.recipients}
    categories = sorted({r.category_of_data for r in record.records})
    _risk(
        doc,
        "Disclosure beyond what the subject consented to",
        f"{len(consumers)} consumer(s) received data; the datasets hold the categories "
        f"{', '.join(categories) or '(none)'} in {len(record.records)} dataset(s).",
        [
            "the consent contracts decide every access; no consent, no delivery",
            "each consent bounds the mode, the fields, the operators and a question budget",
            "every access is recorded on the ledger, where the subject and the DPO read it",
        ],
    )
    ledger = record.ledger_processing
    _risk(
        doc,
        "Re-identification through the ledger",
        f"{ledger.replicas or 0} replica operator(s) (colleges: "
        f"{', '.join(ledger.colleges) or 'none'}) hold every subject's pseudonyms, consents and "
        "accesses for the life of the chain.",
        [
            "one pseudonym per subject and dataset, so datasets are not linked on the ledger",
            "no payload, name or address on the ledger; an erasure makes every replica forget "
            "the pseudonym",
        ],
    )
    longest = max(record.records, key=lambda r: r.retention_days, default=None)
    long_kept = [r.name for r in record.records if r.retention_days > LONG_RETENTION_DAYS]
    _risk(
        doc,
        "Data kept longer than necessary",
        (
            f"The longest retention is {longest.retention_days} days ({longest.name}); "
            f"kept over a year: {', '.join(long_kept) or 'none'}."
            if longest is not None
            else "No dataset is registered."
        ),
        [
            "each retention day has its own key, destroyed when the day ends: expired records "
            "stop decrypting everywhere, backups included"
        ],
    )
    _security_risks(doc, record, register)


def _security_risks(doc: Document, record: RecordsOfProcessing, register: RegisterSummary) -> None:
    measures = {m.measure: m.detail for m in record.security_measures}
    _risk(
        doc,
        "Loss of confidentiality through the keys",
        f"Key protection: {measures.get('Key protection', 'unknown')}.",
        [
            measures.get("Record encryption", "record encryption"),
            measures.get("Erasure by key destruction", "erasure by key destruction"),
        ],
    )
    ledger = [measures[m] for m in ("Consent ledger", "Ledger transport") if m in measures]
    _risk(
        doc,
        "Loss of integrity or availability",
        f"Database: {measures.get('Database', 'unknown')}.",
        [*ledger, "upload anchors on the ledger: each record's integrity is provable"],
    )
    transfers = "; ".join(f"{t.recipient} ({t.country})" for t in record.transfers)
    _risk(
        doc,
        "Transfers outside the EU/EEA",
        f"Configured transfers: {transfers or 'none'}.",
        [
            "every transfer is listed with its safeguard in the records of processing",
        ],
    )
    _risk(
        doc,
        "Rights not honoured in time",
        f"{register.overdue} request(s) overdue now; {register.answered_late} answered after "
        "their deadline.",
        [
            "the register dates every request and its deadline; the DPO's page lists those "
            "overdue and due within seven days; the audit reports each late one"
        ],
    )


def _measures(doc: Document, record: RecordsOfProcessing, findings: list[str]) -> None:
    doc.heading(1, "5. Measures (Art. 35(7)(d))")
    doc.para("Technical measures, as the running system has them:")
    doc.bullets(f"{m.measure}: {m.detail}" for m in record.security_measures)
    doc.para("Organisational measures the vault supports:")
    doc.bullets(
        [
            "records of processing generated from the registry and the ledger (Art. 30)",
            "the subject-request register with its deadlines (Art. 12(3))",
            "the DPO's audits: access log, retention audit, ledger verification",
        ]
    )
    doc.para("The DPO audit's accountability findings at generation:")
    if findings:
        doc.bullets(findings)
    else:
        doc.para("None.")
    doc.blank("Further measures planned, with who carries them out and by when:", 3)


def _sign_off(doc: Document) -> None:
    doc.heading(1, "6. Assessment and sign-off")
    doc.blank("Views of the data subjects or their representatives (Art. 35(9)):", 2)
    doc.blank("Advice of the data protection officer (Art. 35(2)):", 3)
    doc.blank(
        "Residual risk after the measures: acceptable, or high (then consult the supervisory "
        "authority before processing, Art. 36):"
    )
    doc.blank("Next review (Art. 35(11)):")
    doc.blank("Approved by (name and function):")
    doc.blank("Date and signature:", 2)
