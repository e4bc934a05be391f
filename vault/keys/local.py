"""The local key provider: KEKs in a master key file on the service's disk.

Why these rules: the master key file is the root of every secret, so it is created with mode
0600 on first start, refused when group- or world-readable or a symlink (someone could have
swapped it), and rewritten atomically (temporary file in the same directory, fsync, rename) so
a crash during rotation never leaves a half-written file. The file holds only KEKs, never a
record secret. For production, prefer the PKCS#11 provider so the KEK never leaves the HSM.

File format (JSON): {"format": "civis-vault/master-key/v1", "current": "<kek id>",
"keks": {"<kek id>": "<base64 32 bytes>", ...}}
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

from vault.crypto import DecryptionFailed, KeyWrapper, new_secret
from vault.keys.provider import KeyProviderError

_FORMAT = "civis-vault/master-key/v1"


class LocalKeyProvider:
    """KEKs from a 0600 master key file; wraps with AES-256-GCM."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self._path = path
        self._lock = threading.Lock()
        if not path.exists() and not path.is_symlink():
            if not create:
                raise KeyProviderError("master key file is missing")
            self._current, keks = "k1", {"k1": new_secret()}
            self._write(keks, self._current)
        else:
            self._current, keks = self._read()
        self._keks = keks
        self._wrappers = {kid: KeyWrapper(k) for kid, k in keks.items()}

    def __repr__(self) -> str:
        return f"LocalKeyProvider(path={str(self._path)!r}, current={self._current!r})"

    # -- file handling ---------------------------------------------------------------------
    def _check_file(self) -> None:
        st = os.lstat(self._path)
        if stat.S_ISLNK(st.st_mode):
            raise KeyProviderError("master key file must not be a symlink")
        if not stat.S_ISREG(st.st_mode):
            raise KeyProviderError("master key file is not a regular file")
        if st.st_mode & 0o077:
            raise KeyProviderError(
                f"master key file {self._path} is readable by group or others; "
                "run `chmod 600` on it after checking who could have read it"
            )

    def _read(self) -> tuple[str, dict[str, bytes]]:
        self._check_file()
        try:
            doc = json.loads(self._path.read_text())
            if doc.get("format") != _FORMAT:
                raise ValueError
            keks = {str(k): base64.b64decode(v, validate=True) for k, v in doc["keks"].items()}
            current = str(doc["current"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyProviderError("master key file is malformed") from None
        if current not in keks or any(len(k) != 32 for k in keks.values()):
            raise KeyProviderError("master key file is malformed")
        return current, keks

    def _write(self, keks: dict[str, bytes], current: str) -> None:
        doc = {
            "format": _FORMAT,
            "current": current,
            "keks": {k: base64.b64encode(v).decode() for k, v in sorted(keks.items())},
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".new")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(doc).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- KeyProvider -----------------------------------------------------------------------
    def current_kek_id(self) -> str:
        return self._current

    def kek_ids(self) -> list[str]:
        return sorted(self._keks)

    def wrap(self, secret: bytes, *, aad: bytes) -> tuple[str, bytes]:
        kid = self._current
        return kid, self._wrappers[kid].wrap(secret, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, *, aad: bytes) -> bytes:
        wrapper = self._wrappers.get(kek_id)
        if wrapper is None:
            raise DecryptionFailed
        return wrapper.unwrap(wrapped, aad)

    def rotate(self) -> str:
        with self._lock:
            n = 1 + max(int(k[1:]) for k in self._keks if k[1:].isdigit())
            kid = f"k{n}"
            keks = {**self._keks, kid: new_secret()}
            self._write(keks, kid)
            self._keks, self._current = keks, kid
            self._wrappers[kid] = KeyWrapper(keks[kid])
            return kid

    def retire(self, kek_id: str) -> None:
        with self._lock:
            if kek_id == self._current:
                raise KeyProviderError("cannot retire the current KEK; rotate first")
            if kek_id not in self._keks:
                return
            keks = {k: v for k, v in self._keks.items() if k != kek_id}
            self._write(keks, self._current)
            self._keks = keks
            self._wrappers.pop(kek_id, None)
