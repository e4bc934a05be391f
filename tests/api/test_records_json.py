"""Records written as JSON text (api/http/records_json.py) say exactly what the models would.

Why: the read paths write records as text without a model per record, so nothing validates
their output on the way out; these tests are what keeps the text and the schemas (and the
stored payload) in step.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.http import records_json
from api.http.routes.access import AccessRecord
from api.http.schemas import RecordOut
from vault import reads
from vault.crypto.merkle import AuditPath

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(st.text(), _json, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    _objects,
    st.sampled_from(
        [
            lambda o: json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode(),
            lambda o: json.dumps(o).encode(),
            lambda o: json.dumps(o, indent=2, ensure_ascii=False).encode(),
            lambda o: json.dumps(o, ensure_ascii=False).encode("utf-16"),
            lambda o: b"\xef\xbb\xbf" + json.dumps(o).encode(),
        ]
    ),
)
def test_payload_text_is_the_stored_object(obj: dict[str, Any], encode: Any) -> None:
    stored = encode(obj)
    text = records_json.payload_text(stored)
    assert json.loads(text) == json.loads(stored)
    assert "\n" not in text  # one NDJSON line per record, whatever was stored


def test_compact_utf8_payload_goes_out_byte_for_byte() -> None:
    stored = '{"address":"1 rue de l\'Église","n":1.50}'.encode()
    assert records_json.payload_text(stored).encode() == stored  # the bytes the proof covers


def _record(subject: str, payload: bytes) -> reads.RecordOut:
    return reads.RecordOut(
        record_id=uuid.uuid4(),
        dataset_id=uuid.uuid4(),
        upload_id=uuid.uuid4(),
        subject_id=subject,
        payload=payload,
        leaf_index=2,
        leaf_salt=b"\x01" * 32,
        proof=[b"\x02" * 32, b"\x03" * 32],
        merkle_root=b"\x04" * 32,
        record_count=5,
    )


@pytest.mark.parametrize("subject", ["s1", "did:key/z6+a=b@c", "a" * 64])
def test_record_text_matches_the_models(subject: str) -> None:
    r = _record(subject, b'{"city":"Lyon","depth":[1,2]}')
    full = json.loads(records_json.record_text(r, dataset=True))
    out = RecordOut.model_validate(full)
    assert out.subject_id == subject and out.dataset_id == r.dataset_id
    assert out.payload == {"city": "Lyon", "depth": [1, 2]}
    assert out.proof.audit_path == ["02" * 32, "03" * 32]
    assert (out.proof.leaf_index, out.proof.tree_size) == (2, 5)
    assert out.proof.leaf_salt == "01" * 32 and out.proof.merkle_root == "04" * 32

    access = json.loads(records_json.record_text(r))
    assert "dataset_id" not in access
    assert AccessRecord.model_validate(access).proof is not None

    projected = json.loads(records_json.record_text(r, payload=b'{"city":"Lyon"}', proof=False))
    assert projected["proof"] is None
    assert AccessRecord.model_validate(projected).payload == {"city": "Lyon"}


@pytest.mark.parametrize("subject", ["s1", 'Zoé "q" \\ \u2028 \x01'])
def test_the_answers_record_maker_writes_what_the_general_encoding_writes(subject: str) -> None:
    """`access_record_text`, fed a record's fields in `RecordOut`'s order as the reader feeds
    them, gives the very text of `record_text`'s general branch (reached here by passing the
    payload explicitly), and its subject id is the JSON string `json.dumps` writes."""
    r = _record(subject, b'{"city":"Lyon"}')
    made = records_json.access_record_text(*r)
    assert made == records_json.record_text(r, payload=r.payload)
    assert f'"subject_id":{json.dumps(subject, ensure_ascii=False)},' in made
    assert json.loads(made)["subject_id"] == subject


@pytest.mark.parametrize("siblings", [0, 1, 7])
def test_the_audit_path_and_upload_of_each_record_as_they_are(siblings: int) -> None:
    """A tree of one record has an empty audit path; records of two uploads read one after
    the other each name their own (the upload's text is made once per upload)."""
    path = [bytes([i]) * 32 for i in range(siblings)]
    first, second = _record("s1", b"{}")._replace(proof=path), _record("s2", b"{}")
    for r in (first, second, first):
        out = json.loads(records_json.record_text(r))
        assert out["upload_id"] == str(r.upload_id)
        assert out["proof"]["audit_path"] == [h.hex() for h in r.proof]


@pytest.mark.parametrize("siblings", [0, 1, 7])
def test_a_shared_audit_path_is_encoded_once_as_a_plain_one_is(siblings: int) -> None:
    """A cached tree's `AuditPath` is written as the same text as a plain list of the same
    hashes, and that text is kept on it: the next record proved by it reuses it (shown by
    a memo the encoder could not have made itself)."""
    hashes = [bytes([i]) * 32 for i in range(siblings)]
    shared = AuditPath(hashes)
    plain = _record("s1", b"{}")._replace(proof=hashes)
    kept = plain._replace(proof=shared)
    text = records_json.access_record_text(*kept)
    assert text == records_json.access_record_text(*plain)
    assert shared.text is not None and shared.text in text
    shared.text = '"memo"'
    assert json.loads(records_json.access_record_text(*kept))["proof"]["audit_path"] == ["memo"]


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(
        st.lists(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), min_size=1),
        max_size=6,
    )
)
def test_a_document_is_its_parts_between_the_opening_and_the_closing(
    parts: list[list[dict[str, int]]],
) -> None:
    """Parts of one or more values each (a page of records, commas between them), with or
    without parts at all: the JSON document whose array holds every value in order."""
    encoded = [",".join(json.dumps(v) for v in part).encode() for part in parts]
    doc = records_json.document(b'{"head":1,"records":[', encoded, b"]}")
    values = [v for part in parts for v in part]
    assert json.loads(doc) == {"head": 1, "records": values}
    assert records_json.document(b"[", encoded, b"]") == b"[" + b",".join(encoded) + b"]"
    assert records_json.document(b"[", [b""], b"]") == b"[]"  # a read that found nothing
