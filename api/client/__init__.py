"""A typed Python client for the Civis Vault API (`from api.client import CivisClient`).

Why it lives in the project: it is installed with `civis-vault`, versioned with the routes it
calls, and exercised by the demo, the access benchmark and the end-to-end tests, so it cannot
drift from the API unnoticed. docs/TUTORIAL.md walks through it role by role.

Every signing method takes the key to sign with. A data subject's is her pseudonym for the
dataset at hand, which her wallet derives (docs/KEYS.md, "Identities"); a legal entity's is its
key file's own.

    from api.client import CivisClient, public_hex
    from api.client.wallet import Wallet

    wallet = Wallet.open(Path("~/.civis/subject.key").expanduser())
    pseudonym = wallet.pseudonym(DATASET)
    with CivisClient("http://127.0.0.1:8000") as api:
        api.register(pseudonym, "subject", "citizens")
        # the bank published the notice she reads (`publish_notice`); she signs its hash
        shown = api.notice(NOTICE)
        api.grant_consent(
            pseudonym, consumer=BANK, purpose="proof-of-address", notice=NOTICE, dataset=DATASET
        )
        me = api.sign_in(wallet)  # no API key: a session token for every pseudonym
        me.export(public_hex(pseudonym))
        me.sign_out()
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
    ErasureReceiptLost,
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
    SignInRefused,
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
    Notice,
    NoticeHash,
    PredicateAnswer,
    Price,
    Prices,
    Purpose,
    PurposeDeclaration,
    Purposes,
    Receipt,
    RecordVersion,
    Rectification,
    RectificationRequest,
    Restrictions,
    SealedReceipt,
    SignedTransaction,
    SignInChallenge,
    Statement,
    StatementEntry,
    StatementTotals,
    SubjectRequest,
    SubjectSession,
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
    "ErasureReceiptLost",
    "Export",
    "Forbidden",
    "Gone",
    "LedgerQuery",
    "LedgerWrite",
    "MethodNotAllowed",
    "NotFound",
    "Notice",
    "NoticeHash",
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
    "RecordVersion",
    "Rectification",
    "RectificationRequest",
    "RequestTimeout",
    "Restrictions",
    "Role",
    "SealedReceipt",
    "ServerError",
    "SignInChallenge",
    "SignInRefused",
    "SignedTransaction",
    "Statement",
    "StatementEntry",
    "StatementTotals",
    "SubjectRequest",
    "SubjectSession",
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
