"""The committed openapi.yaml is what the app serves; regenerate it when this fails."""

from __future__ import annotations

import yaml

from api.http.openapi import OPENAPI_PATH, openapi_document, openapi_yaml


def test_committed_openapi_matches_the_app() -> None:
    committed = OPENAPI_PATH.read_text()
    assert yaml.safe_load(committed) == openapi_document(), (
        "openapi.yaml drifted: run `civis-vault openapi --output openapi.yaml`"
    )
    assert committed == openapi_yaml()


def test_every_operation_documents_problem_json_errors() -> None:
    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert "application/problem+json" in responses["4XX"]["content"], (method, path)
            # FastAPI's own 422 shape (HTTPValidationError) is not what clients get.
            assert "422" not in responses, (method, path)
