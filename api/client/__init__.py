"""A typed Python client for the Civis Vault API (`from api.client import CivisClient`).

Why it lives in the project: it is installed with `civis-vault`, versioned with the routes it
calls, and exercised by the demo, the access benchmark and the end-to-end tests, so it cannot
drift from the API unnoticed. docs/TUTORIAL.md walks through it role by role.

Every signing method takes the key to sign with. A data subject's is her pseudonym for the
dataset at hand, which her wallet derives (docs/KEYS.md, "Identities"); a legal entity's is its
key file's own.

    from api.client import CivisClient
    from api.client.wallet import Wallet

    wallet = Wallet.open(Path("~/.civis/subject.key").expanduser())
    pseudonym = wallet.pseudonym(DATASET)
    with CivisClient("http://127.0.0.1:8000") as api:
        api.register(pseudonym, "subject", "citizens")
        api.grant_consent(pseudonym, consumer=BANK, purpose="proof-of-address", dataset=DATASET)
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
    PaymentRequired,
    ProblemError,
    ReceiptTimeout,
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
    ConsentMode,
    Credit,
    Dataset,
    Draft,
    ErasureCertificate,
    ErasureReceipt,
    Export,
    LedgerQuery,
    LedgerWrite,
    PredicateAnswer,
    Price,
    Prices,
    Purpose,
    PurposeDeclaration,
    Purposes,
    Receipt,
    SealedReceipt,
    SignedTransaction,
    Statement,
    StatementEntry,
    StatementTotals,
    SubjectRequest,
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
    "ConsentMode",
    "Credit",
    "Dataset",
    "Draft",
    "ErasureCertificate",
    "ErasureReceipt",
    "Export",
    "Forbidden",
    "Gone",
    "LedgerQuery",
    "LedgerWrite",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PaymentRequired",
    "PredicateAnswer",
    "Price",
    "Prices",
    "ProblemError",
    "Progress",
    "Purpose",
    "PurposeDeclaration",
    "Purposes",
    "Receipt",
    "ReceiptTimeout",
    "RequestTimeout",
    "Role",
    "SealedReceipt",
    "ServerError",
    "SignedTransaction",
    "Statement",
    "StatementEntry",
    "StatementTotals",
    "SubjectRequest",
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
