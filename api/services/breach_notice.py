"""The notification draft of an incident, in Markdown: the contents GDPR Art. 33(3) asks the
controller to notify to the supervisory authority, and, when the risk is high, the
communication to the subjects (Art. 34(2), in clear and plain language).

Filled from the incident's timeline (the DPO's facts, newest last) and from the
affected-subjects query as it answers now (counts only: the draft names no subject). What the
timeline does not say yet is marked `[to complete: ...]`, so a draft is never mistaken for a
finished notification; Art. 33(4) allows giving the information in phases.
"""

from __future__ import annotations

import datetime as dt

from api.services.affected import AffectedSubjects
from api.services.incidents import FactOut, IncidentOut, time_left

_ART_33_3 = {
    "nature": "the nature of the breach",
    "categories": "the categories of personal data and of data subjects concerned",
    "consequences": "the likely consequences of the breach",
    "measures": "the measures taken or proposed to address the breach and mitigate its effects",
}


def _texts(incident: IncidentOut, kind: str) -> list[FactOut]:
    return [f for f in incident.timeline if f.kind == kind and f.text]


def _said(incident: IncidentOut, kind: str) -> str:
    facts = _texts(incident, kind)
    if not facts:
        return f"[to complete: {_ART_33_3.get(kind, kind)}]"
    return "\n\n".join(f"{f.text} _(recorded {_when(f.recorded_at)})_" for f in facts)


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _numbers(incident: IncidentOut, affected: AffectedSubjects) -> list[str]:
    estimates = [f for f in incident.timeline if f.kind == "approximate_numbers"]
    lines = []
    if estimates:
        last = estimates[-1]
        subjects = "not estimated" if last.subjects is None else f"about {last.subjects}"
        records = "not estimated" if last.records is None else f"about {last.records}"
        lines.append(f"- The DPO's estimate: data subjects {subjects}; records {records}.")
    else:
        lines.append("- [to complete: the approximate numbers of subjects and of records]")
    complete = "" if affected.complete else " (a lower bound: the scan stopped at its limit)"
    lines.append(
        f"- Found in the cooperative's ledger access record and the vault{complete}: "
        f"{affected.total} data subject(s), as of ledger height {affected.ledger_height}."
    )
    if affected.by_dataset:
        lines += [
            "",
            "| dataset | category | subjects | accesses | records decrypted | records held |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for d in affected.by_dataset:
            lines.append(
                f"| {d.name or d.dataset_id} | {d.category or '-'} | {d.subjects} | "
                f"{d.accesses} | {d.decrypted_records} | {d.held_records} |"
            )
    return lines


def _deadline(incident: IncidentOut, now: dt.datetime) -> list[str]:
    lines = [
        f"- Became aware of the breach: {_when(incident.discovered_at)}",
        f"- Notification due by (72 hours): {_when(incident.deadline_at)}",
    ]
    if incident.notified_at is not None:
        lines.append(f"- Notified: {_when(incident.notified_at)}")
    else:
        lines.append(f"- Not notified yet: {time_left(incident.deadline_at, now)}")
    late = (incident.notified_at or now) > incident.deadline_at
    if late:
        reasons = _texts(incident, "delay_reasons")
        said = " ".join(f.text or "" for f in reasons) or "[to complete: the reasons]"
        lines.append(f"- Reasons for the delay (Art. 33(1)): {said}")
    return lines


def _member_line(incident: IncidentOut, status: str | None) -> list[str]:
    if incident.member is None:
        return []
    standing = {
        "suspended": "suspended by the cooperative's governance (suspend_member): its keys and "
        "transactions are refused",
        "rotated": "replaced by governance (rotate_member_key): the key is refused for ever",
        "active": "still active on the ledger",
    }.get(status or "", "unknown to the ledger")
    return [f"- The member key concerned (`{incident.member}`) is {standing}."]


def notification_draft(
    incident: IncidentOut,
    affected: AffectedSubjects,
    *,
    dpo_contact: str,
    member_status: str | None,
    now: dt.datetime,
) -> str:
    """The Markdown draft; Art. 34's communication follows when the risk is assessed high."""
    contact = dpo_contact or "[to complete: the DPO's name and contact details]"
    risk = incident.risk or "not assessed yet"
    parts = [
        "# Notification of a personal data breach (GDPR Art. 33) — draft",
        "",
        f"Incident: {incident.title} (`{incident.id}`), drafted {_when(now)}; risk: {risk}.",
        "",
        *_deadline(incident, now),
        "",
        "## (a) Nature of the breach",
        "",
        _said(incident, "nature"),
        "",
        "### Categories of data and of data subjects",
        "",
        _said(incident, "categories"),
        "",
        "### Approximate numbers",
        "",
        *_numbers(incident, affected),
        "",
        "## (b) Data Protection Officer",
        "",
        contact,
        "",
        "## (c) Likely consequences",
        "",
        _said(incident, "consequences"),
        "",
        "## (d) Measures taken or proposed",
        "",
        *_member_line(incident, member_status),
        _said(incident, "measures"),
        "",
    ]
    return "\n".join(parts + _communication(incident, affected, contact))


def _communication(incident: IncidentOut, affected: AffectedSubjects, contact: str) -> list[str]:
    if incident.risk != "high":
        return [
            "## Communication to the data subjects (Art. 34)",
            "",
            f"Not required unless the risk is high (assessed: {incident.risk or 'not yet'}).",
            "",
        ]
    return [
        "---",
        "",
        "# What happened to your data (GDPR Art. 34) — draft",
        "",
        "We write to tell you about a breach of security that concerns your personal data.",
        "",
        f"**What happened.** {_said(incident, 'nature')}",
        "",
        f"**What it may mean for you.** {_said(incident, 'consequences')}",
        "",
        f"**What we have done.** {_said(incident, 'measures')}",
        "",
        "**What you can do.** You may withdraw any consent you gave, ask for a copy of your "
        "data and of who received it, or ask for its erasure, from your wallet or by writing "
        "to our Data Protection Officer.",
        "",
        f"**Who to contact.** {contact}",
        "",
        f"_To be sent to the {affected.total} data subject(s) the affected-subjects query "
        f"lists (GET /v1/dpo/incidents/{incident.id}/affected-subjects)._",
        "",
    ]
