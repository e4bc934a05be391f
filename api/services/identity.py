"""A member's identity on the ledger, from the API key that authenticated them.

With a ledger, an API key's member id is the public key the member registered there (64
lowercase hex): the vault signs for the member under that key (a dataset's owner, an access's
consumer). A key issued for any other id has no ledger identity, and the vault refuses to act
for it on the ledger rather than invent one.
"""

from __future__ import annotations

from api.services.keys import Member
from vault.errors import VaultError
from vault.uploads import LEDGER_SUBJECT_ID


class NoLedgerIdentity(VaultError):
    status = 403
    title = "No ledger identity"


def ledger_identity(member: Member) -> bytes:
    """A member's key on the ledger: with a ledger, API keys are bound to it (hex)."""
    if not LEDGER_SUBJECT_ID.fullmatch(member.member_id):
        raise NoLedgerIdentity(
            "this API key's member id is not a ledger public key (64 lowercase hex); "
            "issue the member a key bound to the public key it registered on the ledger"
        )
    return bytes.fromhex(member.member_id)
