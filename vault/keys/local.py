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
import contextlib
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from vault.crypto import DecryptionFailed, KeyWrapper, new_secret
from vault.keys.provider import KeyProviderError

_FORMAT = "civis-vault/master-key/v1"


class LocalKeyProvider:
    """KEKs from a 0600 master key file; wraps with AES-256-GCM.

    Several processes may share the file (API instances, uvicorn workers, `keys rotate`):
    `rotate` and `retire` rewrite it under an exclusive `flock` on `<file>.lock`, starting from
    what the file holds then (never from this process's possibly older copy), and `refresh`
    (the heartbeat) or an unwrap under an unknown KEK id reads it again, so this process
    follows another's rotation and forgets a KEK another retired.
    """

    # Unwrapping is AES-GCM in this process's memory: an event loop may unwrap inline. The one
    # exception is a KEK id this process does not know yet (another process rotated): the
    # unwrap reads the small local file again, under the lock a rotation here holds across its
    # two fsyncs. That is once per rotation, and a loop may wait that long.
    unwrap_waits = False

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        if not path.exists() and not path.is_symlink():
            if not create:
                raise KeyProviderError("master key file is missing")
            with self._file_lock():
                if not path.exists():
                    self._write({"k1": new_secret()}, "k1")
        current, keks = self._read()
        self._adopt(current, keks)

    def _adopt(self, current: str, keks: dict[str, bytes]) -> None:
        """Replace the KEKs in memory at once: `wrap` reads (current, wrappers) as one pair."""
        wrappers = {kid: KeyWrapper(k) for kid, k in keks.items()}
        self._state = (current, wrappers)

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

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive lock across processes for a read-modify-write of the file."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path.with_name(self._path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self._path)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> tuple[str, dict[str, bytes]]:
        self._check_file()
        stamp = self._file_stamp()
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
        self._stamp = stamp
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
        return self._state[0]

    def kek_ids(self) -> list[str]:
        return sorted(self._state[1])

    def wrap(self, secret: bytes, *, aad: bytes) -> tuple[str, bytes]:
        kid, wrappers = self._state
        return kid, wrappers[kid].wrap(secret, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, *, aad: bytes) -> bytes:
        wrapper = self._state[1].get(kek_id)
        if wrapper is None:
            # Another process sharing the file may have rotated since this one read it.
            self.refresh()
            wrapper = self._state[1].get(kek_id)
            if wrapper is None:
                raise DecryptionFailed
        return wrapper.unwrap(wrapped, aad)

    def refresh(self) -> None:
        with self._lock:
            try:
                unchanged = self._file_stamp() == self._stamp
            except FileNotFoundError:
                raise KeyProviderError("master key file is missing") from None
            if not unchanged:
                self._adopt(*self._read())

    def rotate(self) -> str:
        with self._file_lock(), self._lock:
            _, keks = self._read()  # the file as it is now: another process may have rotated
            n = 1 + max(int(k[1:]) for k in keks if k[1:].isdigit())
            kid = f"k{n}"
            keks = {**keks, kid: new_secret()}
            self._write(keks, kid)
            self._read()
            self._adopt(kid, keks)
            return kid

    def retire(self, kek_id: str) -> None:
        with self._file_lock(), self._lock:
            current, keks = self._read()
            if kek_id == current:
                raise KeyProviderError("cannot retire the current KEK; rotate first")
            if kek_id in keks:
                keks = {k: v for k, v in keks.items() if k != kek_id}
                self._write(keks, current)
                self._read()
            self._adopt(current, keks)
