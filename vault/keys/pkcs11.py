"""The PKCS#11 key provider: KEKs generated and used inside an HSM token, never in this process.

Why: with the local provider the KEK sits in a file whose freed disk blocks may outlive a
rotation; here each KEK is an AES-256 secret key object created by the token itself with
CKA_SENSITIVE=True, CKA_EXTRACTABLE=False and CKA_TOKEN=True, so no API call returns its value
and destroying the object (retire) is the token's job. Wrapping a record secret is
AES-256-GCM encryption performed by the token (CKM_AES_GCM, random 12-byte IV, the secret's
scope as GCM additional data), so a wrapped secret moved to another scope fails to unwrap.

Wrapped format: 0x01 (version) | IV (12) | GCM ciphertext || tag (16).
KEK objects are labelled `<prefix>k<N>`; the current KEK is the highest N. The token is the
only record of which KEKs exist, so an instance sharing the token with one that rotated picks
the new KEK up by itself (unwrap reloads on an unknown id; rotate and retire reload first).

Thread safety: one PKCS#11 session shared under a lock. A session may run only one
cryptographic operation at a time, and the API calls the key store from worker threads.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from typing import Any, Protocol, cast

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PinIncorrect, PKCS11Error, UserAlreadyLoggedIn
from pkcs11.mechanisms import GCMParams

from vault.crypto import DecryptionFailed
from vault.keys.provider import KeyProviderError

_VERSION = b"\x01"
_IV_BYTES = 12
_TAG_BITS = 128
_WRAPPED_MAX_BYTES = 1 + _IV_BYTES + 1024 + _TAG_BITS // 8  # secrets are 32 bytes; bound input
_KEK_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.PRIVATE: True,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    # No wrap/unwrap of other keys: the KEK only encrypts our 32-byte secrets.
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
}


# (slot, token label) -> SHA-256 of the PIN that logged this process in; see `_open`.
_LOGINS: dict[tuple[int, str], bytes] = {}
_LOGINS_LOCK = threading.Lock()


class _Kek(Protocol):
    """What we use of a token key. python-pkcs11's `SecretKey` type omits the encrypt/decrypt
    mixins its runtime key objects carry, so the provider states the shape it relies on."""

    def encrypt(
        self, data: bytes, *, mechanism: Mechanism, mechanism_param: GCMParams
    ) -> bytes: ...
    def decrypt(
        self, data: bytes, *, mechanism: Mechanism, mechanism_param: GCMParams
    ) -> bytes: ...
    def destroy(self) -> None: ...


class Pkcs11KeyProvider:
    """KEKs as non-extractable AES-256 keys in a PKCS#11 token; wraps with CKM_AES_GCM."""

    # Every unwrap is a call into the token, one at a time under a lock: it may wait on the
    # device (or the network, for a networked HSM) and on other threads' operations.
    unwrap_waits = True

    def __init__(
        self, module_path: str, token_label: str, pin: str, *, key_label_prefix: str = "civis-"
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{0,32}", key_label_prefix):
            raise KeyProviderError("PKCS#11 key label prefix must be at most 32 plain characters")
        self._prefix = key_label_prefix
        self._label_re = re.compile(re.escape(key_label_prefix) + r"k([1-9][0-9]{0,8})")
        self._lock = threading.Lock()
        self._token_label = token_label
        try:
            lib = pkcs11.lib(module_path)
        except (PKCS11Error, OSError, RuntimeError) as exc:
            raise KeyProviderError(
                f"cannot load PKCS#11 module {module_path!r}: {type(exc).__name__}"
            ) from None
        try:
            token = lib.get_token(token_label=token_label)
        except PKCS11Error as exc:
            raise KeyProviderError(
                f"PKCS#11 token {token_label!r} not found ({type(exc).__name__})"
            ) from None
        try:
            self._session = self._open(token, pin)
        except PKCS11Error as exc:
            # The PIN never appears here: only the kind of failure (PinIncorrect, PinLocked...).
            raise KeyProviderError(
                f"cannot log in to PKCS#11 token {token_label!r} ({type(exc).__name__})"
            ) from None
        self._keys: dict[int, _Kek] = {}
        self._load_keys()
        if not self._keys:
            self._generate(1)

    @staticmethod
    def _open(token: pkcs11.Token, pin: str) -> pkcs11.Session:
        key = (token.slot.slot_id, token.label)
        pin_digest = hashlib.sha256(pin.encode()).digest()
        try:
            session = token.open(rw=True, user_pin=pin)
        except UserAlreadyLoggedIn:
            # PKCS#11 login is per application, not per session: another provider in this
            # process (a reopen, a second instance in tests) already logged in, and a new
            # session shares that login. The token does not check the PIN again, so we do:
            # otherwise any PIN would be accepted while a login is active.
            with _LOGINS_LOCK:
                known = _LOGINS.get(key)
            if known is None or not hmac.compare_digest(known, pin_digest):
                raise PinIncorrect from None
            return token.open(rw=True)
        with _LOGINS_LOCK:
            _LOGINS[key] = pin_digest
        return session

    def __repr__(self) -> str:
        return f"Pkcs11KeyProvider(token={self._token_label!r}, prefix={self._prefix!r}, pin=***)"

    def close(self) -> None:
        """Close the session (logging out when it is the last one)."""
        with self._lock:
            self._session.close()

    # -- token objects -----------------------------------------------------------------------
    def _load_keys(self) -> None:
        keys: dict[int, _Kek] = {}
        for obj in self._session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            match = self._label_re.fullmatch(str(obj[Attribute.LABEL]))
            if match is not None and isinstance(obj, pkcs11.SecretKey):
                keys[int(match.group(1))] = cast(_Kek, obj)
        self._keys = keys

    def _generate(self, n: int) -> None:
        try:
            key = self._session.generate_key(
                KeyType.AES, 256, label=f"{self._prefix}k{n}", store=True, template=_KEK_TEMPLATE
            )
        except PKCS11Error as exc:
            raise KeyProviderError(
                f"token refused to generate a KEK ({type(exc).__name__})"
            ) from None
        self._keys[n] = cast(_Kek, key)

    @staticmethod
    def _number(kek_id: str) -> int | None:
        if re.fullmatch(r"k[1-9][0-9]{0,8}", kek_id) is None:
            return None
        return int(kek_id[1:])

    # -- KeyProvider -------------------------------------------------------------------------
    def current_kek_id(self) -> str:
        with self._lock:
            return f"k{max(self._keys)}"

    def kek_ids(self) -> list[str]:
        with self._lock:
            return [f"k{n}" for n in sorted(self._keys)]

    def wrap(self, secret: bytes, *, aad: bytes) -> tuple[str, bytes]:
        iv = os.urandom(_IV_BYTES)
        with self._lock:
            n = max(self._keys)
            try:
                body = self._keys[n].encrypt(
                    secret,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(iv, aad, _TAG_BITS),
                )
            except PKCS11Error as exc:
                raise KeyProviderError(f"token refused to wrap ({type(exc).__name__})") from None
        return f"k{n}", _VERSION + iv + bytes(body)

    def unwrap(self, kek_id: str, wrapped: bytes, *, aad: bytes) -> bytes:
        n = self._number(kek_id)
        if (
            n is None
            or not wrapped.startswith(_VERSION)
            or not 1 + _IV_BYTES + _TAG_BITS // 8 <= len(wrapped) <= _WRAPPED_MAX_BYTES
        ):
            raise DecryptionFailed
        iv, body = wrapped[1 : 1 + _IV_BYTES], wrapped[1 + _IV_BYTES :]
        with self._lock:
            if n not in self._keys:
                self._load_keys()  # another instance sharing the token may have rotated
            key = self._keys.get(n)
            if key is None:
                raise DecryptionFailed
            try:
                return bytes(
                    key.decrypt(
                        body,
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(iv, aad, _TAG_BITS),
                    )
                )
            except PKCS11Error:
                # Tag mismatch, wrong aad, a key destroyed by another instance: all opaque.
                raise DecryptionFailed from None

    def refresh(self) -> None:
        with self._lock:
            self._load_keys()

    def rotate(self) -> str:
        with self._lock:
            # Another instance sharing the token may have rotated since we last looked.
            self._load_keys()
            n = 1 + max(self._keys, default=0)
            self._generate(n)
            return f"k{n}"

    def retire(self, kek_id: str) -> None:
        with self._lock:
            self._load_keys()
            n = self._number(kek_id)
            if n is not None and self._keys and n == max(self._keys):
                raise KeyProviderError("cannot retire the current KEK; rotate first")
            key = self._keys.pop(n, None) if n is not None else None
            if key is None:
                return
            try:
                key.destroy()
            except PKCS11Error as exc:
                raise KeyProviderError(
                    f"token refused to destroy {kek_id} ({type(exc).__name__})"
                ) from None
