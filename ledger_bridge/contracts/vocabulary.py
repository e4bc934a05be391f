"""The consent contracts' closed vocabularies, in one place: roles, colleges, purposes, legal
bases, erasure reasons and requesters, disclosure modes and predicate operators, restriction
grounds.

Each closed set is declared once here, and read by the body declarations (`bodies.py`), the
rules, the founding state (`app.py`), the genesis writer (`ledger_bridge/genesis.py`) and the
API. Where the API needs a type, it uses the `Literal` aliases below, so pydantic and the
OpenAPI document list exactly these values in this order; `tests/test_vocabulary.py` checks the
API's other enumerations against them.

A set the API shows as a `Literal` is declared as that `Literal` and its tuple read from it
(`get_args`), so the two cannot differ. The order is part of the contract: it is the order of
the enums in openapi.yaml, and `MODES` goes narrowest first (`disclosure.py` compares modes by
their position).

Pure data: no I/O, no import from the rest of the project.
"""

from __future__ import annotations

from typing import Literal, get_args

# -- members ----------------------------------------------------------------------------------

# `device`: a sensor or till certifying eco-citizen events (it signs claims, never
# transactions); `partner`: a company accepting token redemptions, a legal entity.
Role = Literal["provider", "consumer", "subject", "dpo", "validator", "vault", "device", "partner"]
ROLES: tuple[Role, ...] = get_args(Role)
# Roles a key takes by registering alone: residents. A legal entity waits for governance.
SELF_ADMITTED_ROLES: tuple[Role, ...] = ("subject",)
# Roles that read blocks and every query on the replica client port.
READ_ALL_ROLES: frozenset[Role] = frozenset({"vault", "dpo", "validator"})

# A cooperative's colleges are its genesis's to name; these are the colleges of a genesis that
# names none (and of `ledger_bridge.genesis.create_local`'s validators, in turn).
DEFAULT_COLLEGES = ("providers", "services", "citizens")
# The college residents register in, unless the genesis names another.
RESIDENT_COLLEGE = "citizens"

# -- datasets and purposes --------------------------------------------------------------------

# GDPR Art. 6(1) (a)-(f).
LegalBasis = Literal[
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
]
LEGAL_BASES: tuple[LegalBasis, ...] = get_args(LegalBasis)

# The purposes approved at founding when the genesis names none; governance approves others.
DEFAULT_PURPOSES = (
    "proof-of-address",
    "road-maintenance",
    "billing",
    "service-improvement",
    "research",
    "impact-statistics",
)
# The purpose the eco-citizen events' records serve: the metropolis's aggregated statistics.
EVENT_PURPOSE = "impact-statistics"

# The cooperative's economic parameters, set by governance (`rules/parameters.py` holds their
# defaults and bounds).
ParameterName = Literal["commission_bp", "k_anonymity", "token_expiry_days"]
PARAMETER_NAMES: tuple[ParameterName, ...] = get_args(ParameterName)

# -- eco-citizen tokens (rules/devices.py, rules/tokens.py) ------------------------------------

# What certifies an event, and the unit its quantity counts in milli-units of.
DeviceKind = Literal["bike_reader", "water_meter", "shop_scanner"]
DEVICE_KINDS: tuple[DeviceKind, ...] = get_args(DeviceKind)
Unit = Literal["km", "litre", "euro"]
UNITS: tuple[Unit, ...] = get_args(Unit)

# -- disclosure -------------------------------------------------------------------------------

# What a consent discloses, narrowest first: yes/no answers, named fields, whole records.
Mode = Literal["predicate", "projection", "full"]
MODES: tuple[Mode, ...] = get_args(Mode)
PredicateOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "in"]
PREDICATE_OPS: tuple[PredicateOp, ...] = get_args(PredicateOp)

# -- erasure ----------------------------------------------------------------------------------

ErasureReason = Literal[
    "subject_request",
    "dpo_decision",
    "provider_withdrawal",
    "consent_withdrawn",
    "legal_obligation",
    "retention_expired",
]
ERASURE_REASONS: tuple[ErasureReason, ...] = get_args(ErasureReason)
Requester = Literal["subject", "dpo", "provider", "vault"]
REQUESTERS: tuple[Requester, ...] = get_args(Requester)

# -- consent notices ----------------------------------------------------------------------------

# The rights a consent's notice tells the subject of (GDPR Art. 13(2)(b)-(d)): access,
# rectification, erasure, restriction, objection, portability, withdrawal of consent at any
# time, and a complaint to the supervisory authority (the CNIL). A notice names each, no other.
NoticeRight = Literal[
    "access",
    "rectification",
    "erasure",
    "restriction",
    "objection",
    "portability",
    "withdrawal",
    "complaint",
]
NOTICE_RIGHTS: tuple[NoticeRight, ...] = get_args(NoticeRight)
# -- restriction and objection (rules/restriction.py) -----------------------------------------

# GDPR Art. 18(1) (a)-(d): why a subject restricts processing of their data in a dataset.
RestrictionGround = Literal[
    "accuracy_contested",
    "unlawful_processing",
    "no_longer_needed_but_claims",
    "objection_pending",
]
RESTRICTION_GROUNDS: tuple[RestrictionGround, ...] = get_args(RestrictionGround)
# Art. 18(2): what lets the provider read restricted data all the same. The contracts know
# one: the establishment, exercise or defence of legal claims, ordered by the DPO.
ExemptionGround = Literal["legal_claims"]
EXEMPTION_GROUNDS: tuple[ExemptionGround, ...] = get_args(ExemptionGround)
# Art. 21(1): the subject may object to processing based on Art. 6(1)(e) or (f). Under the
# other bases there is nothing to object to: consent is withdrawn (Art. 7(3)); a contract, a
# legal obligation or vital interests are not weighed against the subject's situation.
OBJECTION_BASES: tuple[LegalBasis, ...] = ("public_task", "legitimate_interests")
# -- subject requests (GDPR Art. 12(3): the vault's register, api/services/requests.py) --------

# The rights a subject exercises (Art. 15 to 21), as the register files them.
RequestKind = Literal[
    "access", "rectification", "erasure", "restriction", "objection", "portability"
]
REQUEST_KINDS: tuple[RequestKind, ...] = get_args(RequestKind)
# open: received, not answered; extended: open, its deadline moved by two further months
# (Art. 12(3), with reasons); done: answered; refused: declined (Art. 12(4)/(5), with reasons).
RequestState = Literal["open", "extended", "done", "refused"]
REQUEST_STATES: tuple[RequestState, ...] = get_args(RequestState)
