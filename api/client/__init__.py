"""A typed Python client for the Civis Vault API (`from api.client import CivisClient`).

Why it lives in the project: it is installed with `civis-vault`, versioned with the routes it
calls, and exercised by the demo, the access benchmark and the end-to-end tests, so it cannot
drift from the API unnoticed. docs/TUTORIAL.md walks through it role by role.

    from api.client import CivisClient
    from api.wallet import load_wallet

    wallet = load_wallet(Path("~/.civis/subject.key").expanduser())
    with CivisClient("http://127.0.0.1:8000") as api:
        api.register(wallet, "subject", "citizens")
        api.grant_consent(wallet, consumer=BANK, purpose="proof-of-address", dataset=DATASET)
"""

from api.client.client import (
    CivisClient,
    College,
    Progress,
    Role,
    UploadSource,
    now_ms,
    public_hex,
)
from api.client.errors import (
    AnchorRefused,
    AnchorTimeout,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    Gone,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    RequestTimeout,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from api.client.types import (
    AccessAnswer,
    Dataset,
    Draft,
    ErasureCertificate,
    Export,
    LedgerQuery,
    LedgerWrite,
    PredicateAnswer,
    Receipt,
    SignedTransaction,
    Upload,
)

__all__ = [
    "AccessAnswer",
    "AnchorRefused",
    "AnchorTimeout",
    "BadRequest",
    "CivisClient",
    "ClientError",
    "College",
    "Conflict",
    "Dataset",
    "Draft",
    "ErasureCertificate",
    "Export",
    "Forbidden",
    "Gone",
    "LedgerQuery",
    "LedgerWrite",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PredicateAnswer",
    "ProblemError",
    "Progress",
    "Receipt",
    "RequestTimeout",
    "Role",
    "ServerError",
    "SignedTransaction",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "Upload",
    "UploadSource",
    "now_ms",
    "public_hex",
]
