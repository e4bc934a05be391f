"""Decrypted records to JSON text, one string per record, without a model per record.

Why not the response models: a read of 100 records would build 200 pydantic objects and parse
every payload to a dict (`json.loads`) only for FastAPI to validate and serialise it back, the
larger part of the API's CPU per read. Here each record is written once, as text, and
its payload goes out as the very bytes that were stored, the bytes its inclusion proof covers,
whenever they can stand inside a JSON document as they are (see `payload_text`). The shapes are
still the schemas' (`RecordOut`, `AccessRecord`); tests check the answers against them.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence

from vault.crypto.merkle import AuditPath
from vault.reads import RecordOut

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# A string's JSON text, as `_dumps` writes it (non-ASCII kept), without its encoder's method
# around the C function.
_string = json.encoder.encode_basestring
_hex = bytes.hex


@functools.lru_cache(maxsize=1024)
def _uuid_text(value: int) -> str:
    """A UUID's text, by its integer value, made once per value: an answer's records come a
    few uploads at a time, and `str` of a UUID is about a seventh of a record's own encoding.
    Keyed by the integer, whose hash and comparison are the interpreter's own, not the
    `UUID` class's Python methods (the rows' UUIDs are new objects, so a lookup by UUID would
    run both for each record)."""
    return str(uuid.UUID(int=value))


def payload_text(payload: bytes) -> str:
    """A stored payload (a JSON object, checked at upload) as JSON text for a response.

    The stored bytes are used verbatim when they are UTF-8 text on one line that starts like an
    object: uploads over HTTP store compact JSON, always so. Anything else that `json.loads`
    accepts (UTF-16, a byte-order mark, pretty-printed lines that would split an NDJSON line) is
    re-encoded compactly. Bytes that `json.loads` accepted at upload are valid JSON, so a
    verbatim payload is a well-formed value."""
    if (
        payload[:1] == b"{"
        and b"\n" not in payload
        and b"\r" not in payload
        and b"\x00" not in payload
    ):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return _dumps(json.loads(payload))


def proof_text(r: RecordOut) -> str:
    """The record's `InclusionProof` as JSON text."""
    return _proof_text(r.leaf_index, r.leaf_salt, r.proof, r.merkle_root, r.record_count)


def _path_text(proof: Sequence[bytes]) -> str:
    """An audit path's hashes as the items of a JSON array of hex strings."""
    return '"' + '","'.join(map(_hex, proof)) + '"' if proof else ""


def _proof_text(
    leaf_index: int,
    leaf_salt: bytes,
    proof: Sequence[bytes],
    merkle_root: bytes,
    record_count: int,
) -> str:
    if type(proof) is AuditPath:  # shared by the reads of this leaf: encoded once
        path = proof.text
        if path is None:
            path = proof.text = _path_text(proof)
    else:
        path = _path_text(proof)
    return (
        f'{{"leaf_index":{leaf_index},"leaf_salt":"{leaf_salt.hex()}",'
        f'"audit_path":[{path}],"merkle_root":"{merkle_root.hex()}",'
        f'"tree_size":{record_count}}}'
    )


def access_record_text(
    record_id: uuid.UUID,
    dataset_id: uuid.UUID,
    upload_id: uuid.UUID,
    subject_id: str,
    payload: bytes,
    leaf_index: int,
    leaf_salt: bytes,
    proof: Sequence[bytes],
    merkle_root: bytes,
    record_count: int,
) -> str:
    """A record as the JSON text of an `AccessRecord`, from its fields in `RecordOut`'s order:
    a `reads.RecordMaker`, so that a consented answer goes from the reader's rows to text with
    no `RecordOut` built per record and read back through three calls (5.5 % of the
    instructions of reading and encoding a 100-record answer, docs/BENCHMARKS.md, "Access")."""
    proof_json = _proof_text(leaf_index, leaf_salt, proof, merkle_root, record_count)
    return (
        f'{{"record_id":"{record_id}","upload_id":"{_uuid_text(upload_id.int)}",'
        f'"subject_id":{_string(subject_id)},"payload":{payload_text(payload)},'
        f'"proof":{proof_json}}}'
    )


def record_text(
    r: RecordOut, *, payload: bytes | None = None, dataset: bool = False, proof: bool = True
) -> str:
    """One record as JSON text: `RecordOut` (with `dataset`) or `AccessRecord` (without).

    `payload` replaces the stored payload (a projection); `proof=False` sends a null proof,
    as for a projected record, whose proof could not be checked."""
    if payload is None and proof and not dataset:
        return access_record_text(*r)
    head = f'{{"record_id":"{r.record_id}",'
    if dataset:
        head += f'"dataset_id":"{r.dataset_id}",'
    body = payload_text(r.payload if payload is None else payload)
    tail = f',"proof":{proof_text(r) if proof else "null"}}}'
    return (
        f'{head}"upload_id":"{_uuid_text(r.upload_id.int)}","subject_id":{_string(r.subject_id)},'
        f'"payload":{body}{tail}'
    )


def document(opening: bytes, parts: Sequence[bytes], closing: bytes) -> bytes:
    """`opening`, the `parts` (UTF-8 JSON, each one value or several with commas between them;
    a lone part may be empty, an empty array) with a comma between each two, then `closing`: a
    JSON document around an array, copied once. An answer of 100 records is about 190 KB, a
    large read a thousand times that; a join and then a concatenation for each piece put
    around it would copy the whole each time."""
    if not parts:
        return opening + closing
    pieces = [b","] * (2 * len(parts) + 1)  # opening, part, comma, part, ..., part, closing
    pieces[0], pieces[-1] = opening, closing
    pieces[1::2] = parts
    return b"".join(pieces)
