"""The committed `openapi.yaml`: generated from the app, never written by hand.

Why committed: clients and reviewers see the contract change in the diff; the test
`tests/api/test_openapi.py` fails when the code and the file drift apart. Regenerate with
`civis-vault openapi --output openapi.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from api.http.settings import Settings

OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"


def openapi_document() -> dict[str, Any]:
    from api.http.app import create_app

    # The schema does not depend on the database: the lifespan never runs here.
    app = create_app(Settings(environment="test"), database_url="postgresql+psycopg:///unused")
    return app.openapi()


def openapi_yaml() -> str:
    text: str = yaml.safe_dump(openapi_document(), sort_keys=False, allow_unicode=True, width=100)
    return text
