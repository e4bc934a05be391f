"""`CivisClient`: the API's routes as typed methods, grouped by who calls them.

Why a client in the project: every signed step is three requests (draft, sign the exact
bytes handed out, submit), every upload a stream and a wait for its ledger anchor, every
audit a loop over pages. Written by hand each time, these drift from the API; written once
here, the demo, the benchmarks, the tests and every user share one tested copy.

What it must never do: hold or send a private key (keys sign locally; only signatures
travel), build a transaction's bytes itself (the API's draft is what the contracts verify,
so the wallet signs it unchanged), or swallow a refusal (every answer >= 400 raises a typed
`ProblemError`, see `api/client/errors.py`).

One `httpx.Client` carries the connections; `with_key` gives another party's view over the
same connections, so a script that plays several members (a provider, a bank, the DPO) does
not open a pool per member.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import httpx

from api.client import coupons
from api.client.devices import EventsAnswer
from api.client.errors import (
    AnchorRefused,
    AnchorTimeout,
    ClientError,
    ErasureReceiptLost,
    Gone,
    ReceiptTimeout,
    SignInRefused,
    Unauthorized,
    problem_from,
)
from api.client.sign_in import SignInPayloadError, read_payload
from api.client.types import (
    AccessAnswer,
    Credit,
    Dataset,
    Draft,
    ErasureCertificate,
    ErasureReceipt,
    Export,
    LedgerQuery,
    LedgerWrite,
    Notice,
    NoticeHash,
    PredicateAnswer,
    Price,
    Prices,
    Purposes,
    Rectification,
    RectificationRequest,
    Restrictions,
    SealedReceipt,
    SignedTransaction,
    SignInChallenge,
    Statement,
    SubjectRequest,
    SubjectSession,
    Upload,
)
from api.client.wallet import Wallet, sign_message
from ledger_bridge import receipts
from ledger_bridge.crypto import SigningKey

TIMEOUT_S = 60.0
ANCHOR_WAIT_S = 60.0
ANCHOR_POLL_S = 0.05
# Streamed uploads are sent in chunks of this size: big enough that the per-chunk cost is
# nothing, small enough that a progress bar moves and memory stays flat.
UPLOAD_CHUNK_BYTES = 1 << 20
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MEDIA_TYPES = {
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
}

# (bytes sent so far, total bytes when known): called after each chunk leaves.
Progress = Callable[[int, int | None], None]
UploadSource = bytes | str | os.PathLike[str] | BinaryIO | Iterable[bytes]
Role = Literal["provider", "consumer", "subject", "partner"]
College = Literal["providers", "services", "citizens"]


def public_hex(key: SigningKey) -> str:
    """A member's id on the ledger and in the API: the hex of its Ed25519 public key."""
    return bytes(key.public_key).hex()


def now_ms() -> int:
    """Ledger times are milliseconds since the epoch (consent ends, voting ends)."""
    return int(time.time() * 1000)


class CivisClient:
    """The API for one party: its API key (if any) over a shared `httpx.Client`.

    `base_url` opens a client of its own, closed by `close()` or the `with` block; `http`
    uses one the caller owns (a `fastapi.testclient.TestClient` is one), never closed here.
    Signed methods take the author's `SigningKey` (`api.client.wallet.load_wallet` reads a wallet
    file) and need no API key: the signature is the authentication.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        http: httpx.Client | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        if (base_url is None) == (http is None):
            raise ValueError("give the API's base_url or an httpx client, not both")
        self.http = http or httpx.Client(base_url=str(base_url).rstrip("/"), timeout=timeout_s)
        self._owned = http is None
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The wallet sign-in this client speaks for (`sign_in`), if it is one.
        self.session: SubjectSession | None = None

    def with_key(self, api_key: str) -> CivisClient:
        """Another member's view over the same connections (the caller keeps closing self)."""
        return CivisClient(api_key=api_key, http=self.http)

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> CivisClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One call with this party's key; any answer >= 400 raises its `ProblemError`."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        r = self.http.request(
            method,
            path,
            json=json_body,
            params=query or None,
            content=content,
            headers={**self._auth, **(headers or {})},
        )
        if r.status_code >= 400:
            raise problem_from(r)
        return r

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def _post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json_body=body).json()

    def pages(
        self, path: str, *, cursor: str, next_key: str, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Every page of a list route, following its cursor until the route says no more.

        The routes page by a cursor the answer carries (`next_after`, `next_from_height`),
        never by offset, so a page is never skipped or repeated while the list grows.
        """
        query = dict(params)
        while True:
            page: dict[str, Any] = self._get(path, **query)
            yield page
            following = page.get(next_key)
            if following is None:
                return
            query[cursor] = following

    # -- signing: draft, sign locally, submit ---------------------------------------------

    def draft(
        self, author: str, tx_type: str, body: dict[str, Any], *, valid_for_s: int | None = None
    ) -> Draft:
        """The unsigned transaction the API builds for `author` (hex public key)."""
        request: dict[str, Any] = {"type": tx_type, "author": author, "body": body}
        if valid_for_s is not None:
            request["valid_for_s"] = valid_for_s
        return cast(Draft, self._post("/v1/drafts", request))

    def sign(
        self,
        key: SigningKey,
        tx_type: str,
        body: dict[str, Any],
        *,
        valid_for_s: int | None = None,
    ) -> SignedTransaction:
        """A draft signed by `key`, as `civis-vault wallet sign` would sign it."""
        d = self.draft(public_hex(key), tx_type, body, valid_for_s=valid_for_s)
        signature = sign_message(key, bytes.fromhex(d["signing_payload"]))
        return {"transaction": d["transaction"], "signature": signature.hex()}

    def submit(self, path: str, key: SigningKey, tx_type: str, body: dict[str, Any]) -> Any:
        """Draft, sign and post to `path`: the whole signed step in one call."""
        return self._post(path, self.sign(key, tx_type, body))

    # -- subject sign-in: the wallet's own keys instead of an API key --------------------

    def sign_in(
        self,
        wallet: Wallet,
        *,
        datasets: Iterable[str] | None = None,
        chain_id: str | None = None,
    ) -> CivisClient:
        """A client signed in as the subject, for every pseudonym of `wallet` at once.

        The wallet proves, in one sign-in, each pseudonym it derived (one per dataset it knows;
        `datasets` to prove only those): the API learns they are one person while the session
        lives, the ledger never. The answer's token (`.session`) is accepted wherever a
        subject's API key is, for every one of them, until it expires (15 minutes by default)
        or `sign_out`. `chain_id` pins the cooperative the sign-in must be for.
        """
        if datasets is None:
            keys = list(wallet.pseudonyms().values())
        else:
            keys = [wallet.pseudonym(d) for d in datasets]
        if not keys:
            raise ClientError(
                "the wallet knows no dataset yet: derive the pseudonym of one "
                "(civis-vault wallet pseudonym --dataset ID) or name datasets"
            )
        return self.sign_in_keys(keys, chain_id=chain_id)

    def sign_in_keys(
        self, keys: Sequence[SigningKey], *, chain_id: str | None = None
    ) -> CivisClient:
        """`sign_in` with the keys themselves: a challenge, each key's signature of it.

        The challenge's bytes are checked before any key signs them: they must be a sign-in
        payload (api/client/sign_in.py) for this very challenge, else `SignInRefused` and
        nothing is signed, so an API cannot pass a transaction off as a challenge.
        """
        challenge = cast(SignInChallenge, self.request("POST", "/v1/subjects/challenges").json())
        payload = bytes.fromhex(challenge["signing_payload"])
        try:
            chain, nonce = read_payload(payload)
        except SignInPayloadError as exc:
            raise SignInRefused(f"the API's challenge is not one to sign: {exc}") from None
        if nonce != bytes.fromhex(challenge["challenge"]):
            raise SignInRefused("the API's signing_payload is not for the challenge it gave")
        if chain_id is not None and chain != chain_id:
            raise SignInRefused(f"the challenge is for the chain {chain!r}, not {chain_id!r}")
        proofs = [
            {"pseudonym": public_hex(k), "signature": sign_message(k, payload).hex()} for k in keys
        ]
        body = {"challenge_id": challenge["challenge_id"], "proofs": proofs}
        opened = cast(SubjectSession, self._post("/v1/subjects/sessions", body))
        signed_in = self.with_key(opened["token"])
        signed_in.session = opened
        return signed_in

    def sign_out(self) -> None:
        """End this client's sign-in on the server; the client holds no credential after.

        A token that already ended (expired, signed out elsewhere, its pseudonym erased) is
        no error: the result, a token that opens nothing, is the same."""
        with contextlib.suppress(Unauthorized):
            self.request("DELETE", "/v1/subjects/sessions/current")
        self._auth = {}
        self.session = None

    # -- members and governance -----------------------------------------------------------

    def register(self, key: SigningKey, role: Role, college: College) -> LedgerWrite:
        """`member.register`: a resident is active at once, a legal entity once voted in."""
        body = {"role": role, "college": college}
        return cast(LedgerWrite, self.submit("/v1/members", key, "member.register", body))

    def member(self, public_key: str) -> LedgerQuery:
        return cast(LedgerQuery, self._get(f"/v1/members/{public_key}"))

    def propose(
        self, key: SigningKey, action: dict[str, Any], *, voting_for_ms: int = HOUR_MS
    ) -> LedgerWrite:
        """`governance.propose`; the proposal's id is `result["proposal"]`."""
        body = {"action": action, "voting_ends": now_ms() + voting_for_ms}
        path = "/v1/governance/proposals"
        return cast(LedgerWrite, self.submit(path, key, "governance.propose", body))

    def propose_admission(
        self, key: SigningKey, member: str, *, voting_for_ms: int = HOUR_MS
    ) -> LedgerWrite:
        """Propose to admit a registered legal entity (`member`, hex public key)."""
        action = {"kind": "admit_member", "member": member}
        return self.propose(key, action, voting_for_ms=voting_for_ms)

    def vote(self, key: SigningKey, proposal: int, *, approve: bool = True) -> LedgerWrite:
        """`governance.vote`: one member's yes or no; `result["status"]` says if it passed."""
        body = {"proposal": proposal, "approve": approve}
        path = f"/v1/governance/proposals/{proposal}/votes"
        return cast(LedgerWrite, self.submit(path, key, "governance.vote", body))

    def proposal(self, proposal: int) -> LedgerQuery:
        return cast(LedgerQuery, self._get(f"/v1/governance/proposals/{proposal}"))

    def proposals(self) -> LedgerQuery:
        return cast(LedgerQuery, self._get("/v1/governance/proposals"))

    def purposes(self) -> Purposes:
        """The approved purposes, each with its declaration (fields, modes, operators,
        question budget) that bounds its consents; any member may read them."""
        return cast(Purposes, self._get("/v1/purposes"))

    # -- provider: datasets and uploads ---------------------------------------------------

    def create_dataset(
        self,
        name: str,
        *,
        category: str,
        purposes: list[str],
        retention_days: int,
        legal_basis: str,
    ) -> Dataset:
        """Register a dataset: the contracts record it before the vault stores anything."""
        body = {
            "name": name,
            "category": category,
            "purposes": purposes,
            "retention_days": retention_days,
            "legal_basis": legal_basis,
        }
        return cast(Dataset, self._post("/v1/datasets", body))

    def datasets(self) -> list[Dataset]:
        return cast(list[Dataset], self._get("/v1/datasets"))

    def dataset(self, dataset_id: str) -> Dataset:
        return cast(Dataset, self._get(f"/v1/datasets/{dataset_id}"))

    def upload(
        self,
        dataset_id: str,
        source: UploadSource,
        *,
        media_type: str | None = None,
        progress: Progress | None = None,
        wait: bool = True,
        timeout_s: float = ANCHOR_WAIT_S,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> Upload:
        """Stream NDJSON or CSV records into a dataset; by default wait until anchored.

        `source` is a path (media type from its suffix), bytes, a binary file, or an
        iterable of chunks; it is sent chunked and never read whole, so a file of any size
        takes constant memory. `progress(sent, total)` runs after each chunk. The answer is
        the upload as the API holds it: with `wait`, anchored on the ledger with its receipt
        (`AnchorTimeout`, `AnchorRefused` otherwise).
        """
        chunks, total, kind = _chunks(source, media_type, chunk_bytes)
        content: bytes | Iterable[bytes] = chunks
        if progress is not None:
            content = _reporting(chunks, total, progress)
        elif isinstance(source, bytes):
            content = source  # already in memory: one body with its Content-Length
        r = self.request(
            "POST",
            f"/v1/datasets/{dataset_id}/uploads",
            content=content,
            headers={"Content-Type": kind},
        )
        out = cast(Upload, r.json())
        if not wait or out["state"] == "anchored":
            return out
        return self.wait_anchored(dataset_id, out["upload_id"], timeout_s=timeout_s)

    def upload_status(self, dataset_id: str, upload_id: str) -> Upload:
        return cast(Upload, self._get(f"/v1/datasets/{dataset_id}/uploads/{upload_id}"))

    def wait_anchored(
        self, dataset_id: str, upload_id: str, *, timeout_s: float = ANCHOR_WAIT_S
    ) -> Upload:
        """The upload once its `upload.anchor` committed: consumers are served from then on.

        The API answers an upload as soon as it is stored, with the receipt only if the
        ledger was quick; the outbox relay anchors it later otherwise. Polled, because the
        API has no push channel, at a pace that costs the server nothing.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.upload_status(dataset_id, upload_id)
            if out["state"] == "anchored":
                return out
            if out["state"] in ("refused", "withdrawn"):
                raise AnchorRefused(f"upload {upload_id} is {out['state']}, never served")
            if time.monotonic() > deadline:
                raise AnchorTimeout(f"upload {upload_id} was not anchored within {timeout_s} s")
            time.sleep(ANCHOR_POLL_S)

    def uploads(self, dataset_id: str, *, limit: int | None = None) -> list[Upload]:
        return cast(list[Upload], self._get(f"/v1/datasets/{dataset_id}/uploads", limit=limit))

    def records(
        self, dataset_id: str, *, subject_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A page of the provider's own records, with inclusion proofs."""
        path = f"/v1/datasets/{dataset_id}/records"
        return cast(list[dict[str, Any]], self._get(path, subject_id=subject_id, limit=limit))

    def record(self, record_id: str) -> dict[str, Any]:
        """One of the provider's records with its inclusion proof. A version a rectification
        replaced raises `Gone` (its detail names the current one); a record whose subject
        restricted or objected to processing raises `Conflict` (code `restricted`)."""
        return cast(dict[str, Any], self._get(f"/v1/records/{record_id}"))

    def iter_records(
        self, dataset_id: str, *, subject_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every record of the dataset, streamed as NDJSON: constant memory at any size."""
        params = {"subject_id": subject_id} if subject_id else None
        headers = {**self._auth, "Accept": "application/x-ndjson"}
        path = f"/v1/datasets/{dataset_id}/records"
        with self.http.stream("GET", path, params=params, headers=headers) as r:
            if r.status_code >= 400:
                r.read()
                raise problem_from(r)
            for line in r.iter_lines():
                if line:
                    yield json.loads(line)

    # -- subject: consent, export, erasure request ----------------------------------------

    def publish_notice(self, body: dict[str, Any]) -> NoticeHash:
        """The consumer (or provider) publishes the notice a subject reads before consenting
        (`api.client.notices.notice_body` writes one); `notice_hash` is what the consent
        names."""
        return cast(NoticeHash, self._post("/v1/notices", body))

    def notice(self, notice_hash: str) -> Notice:
        """A notice by its hash (any member): what the subject's wallet shows before signing."""
        return cast(Notice, self._get(f"/v1/notices/{notice_hash}"))

    def grant_consent(
        self,
        key: SigningKey,
        *,
        consumer: str,
        purpose: str,
        notice: str,
        dataset: str | None = None,
        category: str | None = None,
        valid_for_ms: int = DAY_MS,
        mode: str | None = None,
        fields: list[str] | None = None,
    ) -> LedgerWrite:
        """`consent.grant` signed by the subject: in force for decisions from the next block.

        `notice` is the hash of the notice the subject was shown (`publish_notice`): the API
        refuses a consent whose notice it does not hold or that names another consumer or
        purpose (422). Name one dataset or one data category; the consent ends
        `valid_for_ms` from now. `mode` (predicate, projection, full) and `fields` say what
        it discloses, within what the purpose declares; unnamed, the narrowest mode the
        purpose allows and its fields.
        """
        body: dict[str, Any] = {
            **_scope(dataset, category),
            "subject": public_hex(key),
            "consumer": consumer,
            "purpose": purpose,
            "valid_until": now_ms() + valid_for_ms,
            "notice": notice,
        }
        if mode is not None:
            body["mode"] = mode
        if fields is not None:
            body["fields"] = fields
        return cast(LedgerWrite, self.submit("/v1/consents", key, "consent.grant", body))

    def revoke_consent(
        self,
        key: SigningKey,
        *,
        consumer: str,
        purpose: str,
        dataset: str | None = None,
        category: str | None = None,
    ) -> LedgerWrite:
        """`consent.revoke` signed by the subject: every access from the next block is refused."""
        body = {
            **_scope(dataset, category),
            "subject": public_hex(key),
            "consumer": consumer,
            "purpose": purpose,
        }
        path = "/v1/consents/revocations"
        return cast(LedgerWrite, self.submit(path, key, "consent.revoke", body))

    def consents(self, subject_id: str) -> LedgerQuery:
        return cast(LedgerQuery, self._get(f"/v1/subjects/{subject_id}/consents"))

    def export(
        self, subject_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> Export:
        """Art. 15/20, one page (subject or DPO): the subject's records with proofs, their
        superseded history, datasets (purposes, legal basis, retention, source, recipients),
        consents with their notices, accesses, erasures and decryptions. `next_cursor`
        (null at the end) asks for the rest: `iter_export` follows it."""
        path = f"/v1/subjects/{subject_id}/export"
        return cast(Export, self._get(path, cursor=cursor, limit=limit))

    def iter_export(self, subject_id: str, *, limit: int | None = None) -> Iterator[Export]:
        """Every page of the subject's export, until the one that ends it."""
        for page in self.pages(
            f"/v1/subjects/{subject_id}/export",
            cursor="cursor",
            next_key="next_cursor",
            limit=limit,
        ):
            yield cast(Export, page)

    def export_package(self, subject_id: str | None = None) -> dict[str, Any]:
        """The whole export as one portable package with the ledger's proofs (docs/EXPORT.md;
        `civis-vault verify-export` checks it): of `subject_id` (the subject or the DPO), or,
        unnamed, of every pseudonym the signed-in subject holds."""
        path = "/v1/subjects/export-package"
        if subject_id is not None:
            path = f"/v1/subjects/{subject_id}/export/package"
        return cast(dict[str, Any], self._get(path))

    def request_erasure(self, key: SigningKey, *, dataset: str | None = None) -> ErasureCertificate:
        """Art. 17 by the subject: signed with their wallet, recorded, carried out at once."""
        scope: dict[str, Any] = {"kind": "subject", "subject": public_hex(key)}
        if dataset is not None:
            scope["dataset"] = dataset
        path = "/v1/erasure-requests"
        return cast(ErasureCertificate, self.submit(path, key, "erasure.request", {"scope": scope}))

    def request_rectification(
        self, key: SigningKey, *, dataset: str, record: str, statement: str | bytes
    ) -> RectificationRequest:
        """Art. 16 by the subject: a signed rectification.request for one of their records
        (its id as their export shows it). Only the SHA-256 of `statement` (what is wrong)
        goes on the ledger; keep the statement to give it to the provider or the DPO."""
        text = statement.encode() if isinstance(statement, str) else statement
        body = {
            "dataset": dataset,
            "record": record,
            "statement_hash": hashlib.sha256(text).hexdigest(),
        }
        path = f"/v1/subjects/{public_hex(key)}/rectification-requests"
        return cast(RectificationRequest, self.submit(path, key, "rectification.request", body))

    # -- subject and DPO: restriction (Art. 18) and objection (Art. 21) ------------------

    def restrict(self, key: SigningKey, *, dataset: str, ground: str) -> LedgerWrite:
        """`restriction.set` signed by the subject (`key`: their pseudonym in `dataset`): no
        consumer gets their data there, nor does the provider read it, from the next block.
        `ground`: Art. 18(1), one of `vocabulary.RESTRICTION_GROUNDS`."""
        body = {"dataset": dataset, "ground": ground}
        path = f"/v1/subjects/{public_hex(key)}/restrictions"
        return cast(LedgerWrite, self.submit(path, key, "restriction.set", body))

    def lift_restriction(self, key: SigningKey, *, dataset: str) -> LedgerWrite:
        path = f"/v1/subjects/{public_hex(key)}/restrictions"
        return cast(LedgerWrite, self.submit(path, key, "restriction.lift", {"dataset": dataset}))

    def object_to(self, key: SigningKey, *, dataset: str) -> LedgerWrite:
        """`objection.set` (Art. 21(1)): only where the dataset's legal basis is public task
        or legitimate interests (`Conflict` with `basis_is_consent` otherwise)."""
        path = f"/v1/subjects/{public_hex(key)}/objections"
        return cast(LedgerWrite, self.submit(path, key, "objection.set", {"dataset": dataset}))

    def withdraw_objection(self, key: SigningKey, *, dataset: str) -> LedgerWrite:
        path = f"/v1/subjects/{public_hex(key)}/objections"
        body = {"dataset": dataset}
        return cast(LedgerWrite, self.submit(path, key, "objection.withdraw", body))

    def restrictions(self, subject_id: str) -> Restrictions:
        """The subject's standing in every dataset (the subject or the DPO)."""
        return cast(Restrictions, self._get(f"/v1/subjects/{subject_id}/restrictions"))

    def exempt_restricted(
        self, *, dataset: str, subject: str, until_ms: int, ground: str = "legal_claims"
    ) -> LedgerWrite:
        """The DPO's legal-claims exemption (Art. 18(2)): the provider reads the subject's
        records until `until_ms`; consumers stay refused."""
        body = {"dataset": dataset, "subject": subject, "ground": ground, "until": until_ms}
        return cast(LedgerWrite, self._post("/v1/dpo/restriction-exemptions", body))

    def override_objection(self, *, dataset: str, subject: str, grounds: str) -> LedgerWrite:
        """The DPO's compelling legitimate grounds (no personal data: the subject reads them):
        processing goes on despite the objection, from the next block."""
        body = {"dataset": dataset, "subject": subject, "grounds": grounds}
        return cast(LedgerWrite, self._post("/v1/dpo/objection-overrides", body))

    def withheld_records(self, dataset_id: str, *, subject_id: str | None = None) -> int:
        """How many of the provider's records in the dataset its reads leave out now, their
        subjects having restricted or objected to processing (`Civis-Withheld-Records`)."""
        path = f"/v1/datasets/{dataset_id}/records"
        r = self.request("GET", path, params={"subject_id": subject_id, "limit": 1})
        return int(r.headers["Civis-Withheld-Records"])

    def requests(self, subject_id: str) -> list[SubjectRequest]:
        """The subject's requests in the Art. 12(3) register, newest first (subject or DPO)."""
        answer = self._get(f"/v1/subjects/{subject_id}/requests")
        return cast(list[SubjectRequest], answer["requests"])

    # -- consumer: records, projections, predicates ---------------------------------------

    def access(
        self,
        dataset_id: str,
        purpose: str,
        *,
        subjects: list[str] | None = None,
        fields: list[str] | None = None,
        price_cents: int | None = None,
    ) -> AccessAnswer:
        """Records for a purpose: all consenting subjects, or those named; `fields` projects.

        A named subject without consent is listed in `denied` with the reason, not raised:
        the others' records still come back in the same answer. A priced mode needs its
        price in `price_cents` (`prices`); `charged_cents` says what was paid.
        """
        body: dict[str, Any] = {"dataset_id": dataset_id, "purpose": purpose}
        if subjects is not None:
            body["subjects"] = subjects
        if fields is not None:
            body["fields"] = fields
        if price_cents is not None:
            body["price_cents"] = price_cents
        return cast(AccessAnswer, self._post("/v1/access-requests", body))

    def predicate(
        self,
        dataset_id: str,
        purpose: str,
        *,
        subject: str,
        field: str,
        op: str,
        value: Any,
        price_cents: int | None = None,
    ) -> PredicateAnswer:
        """A yes/no about one subject; no consent raises `Forbidden` (code `no_consent`).

        Refused by raising, unlike `access`: a predicate names exactly one subject, so a
        refusal is the whole answer. A priced answer needs its price in `price_cents`.
        """
        body: dict[str, Any] = {
            "dataset_id": dataset_id,
            "purpose": purpose,
            "subjects": [subject],
            "predicate": {"field": field, "op": op, "value": value},
        }
        if price_cents is not None:
            body["price_cents"] = price_cents
        return cast(PredicateAnswer, self._post("/v1/access-requests", body))

    # -- paid access: prices, credits, statements (euro cents) ---------------------------

    def set_price(self, dataset_id: str, mode: str, price_cents: int) -> Price:
        """The dataset's owner prices one answer in `mode` (0 deletes that price: the mode
        owes the nearest wider priced mode's, free if none)."""
        path = f"/v1/datasets/{dataset_id}/prices/{mode}"
        return cast(Price, self.request("PUT", path, json_body={"price_cents": price_cents}).json())

    def prices(self, dataset_id: str) -> Prices:
        """What one answer costs per mode: the `price_cents` an access must name."""
        return cast(Prices, self._get(f"/v1/datasets/{dataset_id}/prices"))

    def deposit(self, member: str, amount_cents: int, reference: str) -> Credit:
        """The DPO records a payment the cooperative received for `member` (hex key); a
        reference is credited once, so a retry cannot credit twice."""
        body = {"member": member, "amount_cents": amount_cents, "reference": reference}
        return cast(Credit, self._post("/v1/credits", body))

    def statement(self, public_key: str, *, after: int = 0, limit: int = 100) -> Statement:
        """One page of a member's credit statement (its own, or any for the DPO)."""
        path = f"/v1/members/{public_key}/statement"
        return cast(Statement, self._get(path, after=after, limit=limit))

    def rectify(
        self,
        dataset_id: str,
        record_id: str,
        *,
        subject_id: str,
        payload: dict[str, Any],
        request: int | None = None,
    ) -> Rectification:
        """Art. 16 by the dataset's provider or the DPO: replace a record by its corrected
        version (`subject_id` is the record's); `request`, the subject's request it carries
        out. State `anchored` once the ledger recorded it, `pending` if it was slower."""
        body: dict[str, Any] = {"subject_id": subject_id, "payload": payload}
        if request is not None:
            body["request"] = request
        path = f"/v1/datasets/{dataset_id}/records/{record_id}/rectification"
        return cast(Rectification, self._post(path, body))

    # -- DPO: erasure and audits ----------------------------------------------------------

    def erase(
        self,
        *,
        subject_id: str | None = None,
        dataset_id: str | None = None,
        upload_id: str | None = None,
        reason: str = "dpo_decision",
    ) -> ErasureCertificate:
        """The DPO erases a subject (everywhere or in one dataset) or one upload.

        State `recorded` with a receipt once the ledger holds it, `pending` if the ledger was
        slower than the API's wait (read it again with `erasure`).
        """
        body: dict[str, Any] = {"reason": reason}
        for name, value in (
            ("subject_id", subject_id),
            ("dataset_id", dataset_id),
            ("upload_id", upload_id),
        ):
            if value is not None:
                body[name] = value
        return cast(ErasureCertificate, self._post("/v1/erasures", body))

    def erasure(self, erasure_id: int) -> ErasureCertificate:
        return cast(ErasureCertificate, self._get(f"/v1/erasures/{erasure_id}"))

    def sealed_receipt(self, erasure_id: int) -> SealedReceipt:
        """The erasure's receipt sealed to its answer's `receipt_key`; no API key needed."""
        return cast(SealedReceipt, self._get(f"/v1/erasure-receipts/{erasure_id}"))

    def erasure_receipt(
        self, certificate: ErasureCertificate, *, wait_s: float = 30.0, poll_s: float = 0.2
    ) -> ErasureReceipt:
        """The subject's erasure receipt {height, request, tx_id} for an erasure's answer.

        A recorded answer carries it; a pending one (202) carries `receipt_key` instead, and
        the receipt is fetched sealed and opened with it, waiting up to `wait_s` for the ledger
        to record the erasure (`ReceiptTimeout` after). The vault cannot give it again: keep it
        (`Wallet.record_erasure`). `receipts.ReceiptInvalid` if the key does not open it.
        `ErasureReceiptLost`, with the API's reason, when the erasure was recorded without a
        receipt (the answer's `erasure_receipt_lost`, or a 410 while waiting): none will come.
        """
        if certificate.get("erasure_receipt") is not None:
            return certificate["erasure_receipt"]  # type: ignore[return-value]
        lost = certificate.get("erasure_receipt_lost")
        if lost:
            raise ErasureReceiptLost(lost)
        key = certificate.get("receipt_key")
        if not key:
            raise ClientError("the certificate carries neither erasure_receipt nor receipt_key")
        deadline = time.monotonic() + wait_s
        while (sealed := self._sealed_or_lost(certificate["erasure_id"])) is None:
            if time.monotonic() >= deadline:
                raise ReceiptTimeout(f"erasure {certificate['erasure_id']} is not recorded yet")
            time.sleep(poll_s)
        opened = receipts.open_sealed(bytes.fromhex(sealed), bytes.fromhex(key))
        return cast(ErasureReceipt, opened.to_json())

    def _sealed_or_lost(self, erasure_id: int) -> str | None:
        """The sealed receipt, null while pending; a 410 says it will never come."""
        try:
            return self.sealed_receipt(erasure_id)["sealed_receipt"]
        except Gone as exc:
            raise ErasureReceiptLost(exc.detail) from exc

    def iter_access_log(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every access the contracts decided, oldest first (filters: subject, consumer,
        purpose, since, until, limit per page)."""
        for page in self.pages(
            "/v1/dpo/access-log", cursor="after", next_key="next_after", **filters
        ):
            yield from page["accesses"]

    def retention_audit(self, *, dataset_id: str | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._get("/v1/dpo/retention-audit", dataset_id=dataset_id))

    def iter_ledger_verification(self, *, from_height: int = 1) -> Iterator[dict[str, Any]]:
        """The replicas' chains verified a slice at a time; each page has its `findings`."""
        return self.pages(
            "/v1/dpo/ledger-verification",
            cursor="from_height",
            next_key="next_from_height",
            from_height=from_height,
        )

    def records_of_processing(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._get("/v1/dpo/records-of-processing"))

    def records_of_processing_markdown(self) -> str:
        """Art. 30(1) as a Markdown document to file."""
        return self.request("GET", "/v1/dpo/records-of-processing", params={"format": "md"}).text

    def dpia(self, *, fmt: Literal["md", "pdf"] = "md") -> bytes:
        """The DPIA draft (Art. 35), Markdown or PDF, for the DPO to complete and sign."""
        return self.request("GET", "/v1/dpo/dpia", params={"format": fmt}).content

    def iter_requests(
        self,
        *,
        state: list[str] | None = None,
        due_before: str | None = None,
        limit: int | None = None,
    ) -> Iterator[SubjectRequest]:
        """Every subject's requests by deadline (DPO); `state=["open", "extended"]` with
        `due_before` (ISO 8601) now are the overdue ones."""
        for page in self.pages(
            "/v1/dpo/requests",
            cursor="after",
            next_key="next_after",
            state=state,
            due_before=due_before,
            limit=limit,
        ):
            yield from cast(list[SubjectRequest], page["requests"])

    def extend_request(self, request_id: str, reason: str) -> SubjectRequest:
        """Art. 12(3): two further months for an open request, with the subject's reasons."""
        path = f"/v1/dpo/requests/{request_id}/extension"
        return cast(SubjectRequest, self._post(path, {"reason": reason}))

    def sync_requests(self) -> dict[str, Any]:
        """Pull the subjects' signed requests from the ledger into the register now."""
        return cast(dict[str, Any], self._post("/v1/dpo/requests/sync", None))

    def iter_outbox(
        self, *, state: Literal["refused", "pending"] = "refused"
    ) -> Iterator[dict[str, Any]]:
        """Vault facts the ledger has not recorded (refused by the contracts, or queued)."""
        for page in self.pages(
            "/v1/dpo/outbox", cursor="after", next_key="next_after", state=state
        ):
            yield from page["facts"]

    # -- DPO: personal data breaches (GDPR Art. 33, 34) ------------------------------------

    def open_incident(
        self,
        title: str,
        *,
        discovered_at: str,
        member: str | None = None,
        dataset_id: str | None = None,
        window_start: str | None = None,
        window_end: str | None = None,
    ) -> dict[str, Any]:
        """Open an incident (times ISO 8601): its deadline is `discovered_at` + 72 hours."""
        body = {
            "title": title,
            "discovered_at": discovered_at,
            "member": member,
            "dataset_id": dataset_id,
            "window_start": window_start,
            "window_end": window_end,
        }
        out = self._post("/v1/dpo/incidents", {k: v for k, v in body.items() if v is not None})
        return cast(dict[str, Any], out)

    def incidents(self, *, state: Literal["open", "closed", "all"] = "open") -> dict[str, Any]:
        """`{"incidents": [...], "findings": [...]}`, soonest deadline first."""
        return cast(dict[str, Any], self._get("/v1/dpo/incidents", state=state))

    def incident(self, incident_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._get(f"/v1/dpo/incidents/{incident_id}"))

    def add_incident_fact(self, incident_id: str, kind: str, **fields: Any) -> dict[str, Any]:
        """Append to the timeline: `text`, `at`, `subjects`, `records`, `risk` as the kind
        needs (docs/API.md "Incidents")."""
        body = {"kind": kind, **{k: v for k, v in fields.items() if v is not None}}
        return cast(dict[str, Any], self._post(f"/v1/dpo/incidents/{incident_id}/facts", body))

    def close_incident(self, incident_id: str, *, summary: str | None = None) -> dict[str, Any]:
        body = {} if summary is None else {"summary": summary}
        return cast(dict[str, Any], self._post(f"/v1/dpo/incidents/{incident_id}/close", body))

    def iter_affected_subjects(self, incident_id: str, **scope: Any) -> Iterator[dict[str, Any]]:
        """Every page of the subjects the incident affects (scope: member, dataset_id, since,
        until, include_held, limit per page; each not given is the incident's own)."""
        return self.pages(
            f"/v1/dpo/incidents/{incident_id}/affected-subjects",
            cursor="after",
            next_key="next_after",
            **scope,
        )

    def notification_draft(self, incident_id: str) -> str:
        """The Art. 33 (and, for a high risk, Art. 34) draft, in Markdown."""
        return self.request("GET", f"/v1/dpo/incidents/{incident_id}/notification-draft").text

    def recipient_notices(self, *, undelivered: bool = False) -> Iterator[dict[str, Any]]:
        """The DPO's view: every recipient notice with its delivery status, oldest first
        (each page's `findings` name those never delivered: `dpo_recipient_findings`)."""
        for page in self.pages(
            "/v1/dpo/recipient-notices",
            cursor="after",
            next_key="next_after",
            undelivered=str(undelivered).lower(),
        ):
            yield from page["notices"]

    def name_member(self, member_id: str, display_name: str, contact: str = "") -> dict[str, Any]:
        """Give a legal entity its name and contact in the members' directory (the DPO only;
        a resident's pseudonym is refused: it gets no name)."""
        body = {"display_name": display_name, "contact": contact}
        r = self.request("PUT", f"/v1/dpo/members/{member_id}/name", json_body=body)
        return cast(dict[str, Any], r.json())

    def members(self) -> list[dict[str, Any]]:
        """Every member but the residents, with the name and contact the vault keeps."""
        return cast(list[dict[str, Any]], self._get("/v1/dpo/members")["members"])

    def dpo_recipient_findings(self) -> list[dict[str, Any]]:
        """Recipient notices not delivered after the attempts or the hours allowed."""
        page = self._get("/v1/dpo/recipient-notices", limit=1)
        return cast(list[dict[str, Any]], page["findings"])

    # -- accountability: recorded reads, recipient notices ------------------------------------

    def decryption_proof(self, decryption_id: str) -> dict[str, Any]:
        """A recorded read of personal data with its inclusion proof and `read.record` receipt
        (the reader, the subject whose data it was, or the DPO). Check it with
        `api.client.accountability.verify_read` and the root the ledger holds."""
        return cast(dict[str, Any], self._get(f"/v1/decryptions/{decryption_id}/proof"))

    def poll_notices(self, *, after: int = 0) -> tuple[list[dict[str, Any]], int]:
        """A consumer's notices past `after` (every page of them) and the `after` to poll
        with next time: keep it between polls so each notice is read once. Check each with
        `api.client.accountability.verify_notice` and the vault's key from the genesis."""
        notices: list[dict[str, Any]] = []
        for page in self.pages(
            "/v1/recipient-notices", cursor="after", next_key="next_after", after=after
        ):
            notices += page["notices"]
        return notices, (notices[-1]["id"] if notices else after)

    def set_webhook(self, url: str | None) -> dict[str, Any]:
        """Where the vault POSTs this consumer's notices (https, a public address); None
        removes it (the feed stays)."""
        r = self.request("PUT", "/v1/consumers/me/webhook", json_body={"url": url})
        return cast(dict[str, Any], r.json())

    # -- eco-citizen tokens: devices, events, balances, offers, coupons ----------------------

    def register_device(
        self, key: SigningKey, *, device: str, kind: str, dataset: str, district: str
    ) -> LedgerWrite:
        """`device.register` signed by the provider operating it (owner of `dataset`): the
        device is pending until governance admits it (`admit_device`)."""
        body = {"device": device, "kind": kind, "dataset": dataset, "district": district}
        return cast(LedgerWrite, self.submit("/v1/devices", key, "device.register", body))

    def device(self, device: str) -> LedgerQuery:
        return cast(LedgerQuery, self._get(f"/v1/devices/{device}"))

    def send_events(self, device: str, events: list[dict[str, Any]]) -> EventsAnswer:
        """Events a device signed (`api.client.devices.Device.event`), at most 256 a call:
        their details go to the vault, their rewards to the subjects. No API key needed."""
        path = f"/v1/devices/{device}/events"
        return cast(EventsAnswer, self._post(path, {"events": events}))

    def reward_rules(self) -> LedgerQuery:
        return cast(LedgerQuery, self._get("/v1/reward-rules"))

    def balance(self, account: str) -> LedgerQuery:
        """`result`: {mtok, lots}; the holder's own API key or the DPO's."""
        return cast(LedgerQuery, self._get(f"/v1/accounts/{account}"))

    def token_statement(
        self, account: str, *, after: int | None = None, limit: int | None = None
    ) -> LedgerQuery:
        path = f"/v1/accounts/{account}/statement"
        return cast(LedgerQuery, self._get(path, after=after, limit=limit))

    def transfer(self, key: SigningKey, *, to: str, amount_mtok: int) -> LedgerWrite:
        """`token.transfer` signed by the holder; `Conflict` (`insufficient_tokens`) beyond
        the balance."""
        body = {"to": to, "amount_mtok": amount_mtok}
        return cast(LedgerWrite, self.submit("/v1/transfers", key, "token.transfer", body))

    def publish_offer(
        self,
        key: SigningKey,
        *,
        offer: str,
        title: str,
        category: str,
        price_mtok: int,
        active: bool = True,
    ) -> LedgerWrite:
        """`offer.publish` signed by an active partner (again to change or retire it)."""
        body = {
            "offer": offer,
            "title": title,
            "category": category,
            "price_mtok": price_mtok,
            "active": active,
        }
        return cast(LedgerWrite, self.submit("/v1/offers", key, "offer.publish", body))

    def offers(self, *, partner: str | None = None) -> LedgerQuery:
        return cast(LedgerQuery, self._get("/v1/offers", partner=partner))

    def redeem(
        self, key: SigningKey, *, offer: str, price_mtok: int, secret: bytes | None = None
    ) -> coupons.Redemption:
        """`token.redeem` signed by the holder: a fresh secret (or `secret`), only its hash
        sent. The answer holds the printable code and the QR payload; the code IS the secret,
        so whoever holds it can spend the coupon once. `price_mtok` is the price the holder
        agrees to (the one `offers()` showed): the partner republishing the offer at another
        price before the block refuses the redemption (`Conflict`, `price_mismatch`) and
        charges nothing."""
        secret = secret if secret is not None else coupons.new_secret()
        body = {
            "offer": offer,
            "coupon": coupons.coupon_id(secret).hex(),
            "price_mtok": price_mtok,
        }
        answer = self.submit("/v1/redemptions", key, "token.redeem", body)
        return coupons.redemption(coupons.encode_code(secret), answer)

    def spend_coupon(self, key: SigningKey, code: str) -> LedgerWrite:
        """`coupon.spend` signed by the offer's partner with the code's secret; `Conflict`
        (`coupon_spent`) the second time. A mistyped code raises `CouponError` locally."""
        body = {"secret": coupons.decode_code(code).hex()}
        return cast(LedgerWrite, self.submit("/v1/coupons/spend", key, "coupon.spend", body))

    # -- dashboards -----------------------------------------------------------------------

    def impact_dashboard(
        self,
        datasets: Sequence[str] = (),
        *,
        week_from: str | None = None,
        week_to: str | None = None,
    ) -> dict[str, Any]:
        """The metropolis's k-anonymous statistics (a consumer's key): one recorded access
        per dataset for purpose impact-statistics, cells per district and ISO week
        (`2026-W49`), suppressed below k subjects; every registered dataset for the purpose
        when `datasets` is empty."""
        params = {"dataset": list(datasets) or None, "from": week_from, "to": week_to}
        return cast(dict[str, Any], self._get("/v1/dashboards/impact", **params))

    def partner_dashboard(self) -> dict[str, Any]:
        """A partner's own redemptions by day and category (a partner's key)."""
        return cast(dict[str, Any], self._get("/v1/dashboards/partner"))

    # -- ledger and health ----------------------------------------------------------------

    def ledger_status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._get("/v1/ledger/status"))

    def block(self, height: int) -> dict[str, Any]:
        """A block with its commit certificate, `verified` against the genesis keys."""
        return cast(dict[str, Any], self._get(f"/v1/ledger/blocks/{height}"))

    def iter_blocks(
        self, *, from_height: int = 1, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Block headers from `from_height` up to the tip as it is when each page is read."""
        for page in self.pages(
            "/v1/ledger/blocks",
            cursor="from_height",
            next_key="next_from_height",
            from_height=from_height,
            limit=limit,
        ):
            yield from page["blocks"]

    def health(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._get("/healthz"))


def _scope(dataset: str | None, category: str | None) -> dict[str, str]:
    if (dataset is None) == (category is None):
        raise ValueError("a consent names exactly one of dataset or category")
    return {"dataset": dataset} if dataset is not None else {"category": cast(str, category)}


def _chunks(
    source: UploadSource, media_type: str | None, chunk_bytes: int
) -> tuple[Iterable[bytes], int | None, str]:
    """(chunks, total bytes if known, media type) for any upload source."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        kind = media_type or MEDIA_TYPES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"say the media type of {path.name} (NDJSON or CSV)")
        return _file_chunks(path, chunk_bytes), path.stat().st_size, kind
    kind = media_type or "application/x-ndjson"
    if isinstance(source, bytes):
        pieces = range(0, len(source), chunk_bytes)
        return (source[i : i + chunk_bytes] for i in pieces), len(source), kind
    if hasattr(source, "read"):
        stream = cast(BinaryIO, source)
        return iter(lambda: stream.read(chunk_bytes), b""), None, kind
    return source, None, kind


def _file_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            yield chunk


def _reporting(chunks: Iterable[bytes], total: int | None, progress: Progress) -> Iterator[bytes]:
    sent = 0
    for chunk in chunks:
        yield chunk
        sent += len(chunk)
        progress(sent, total)
