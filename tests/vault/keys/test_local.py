"""The local key provider's master key file: created 0600, unsafe files refused, rotation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vault.crypto import DecryptionFailed
from vault.keys import KeyProviderError, LocalKeyProvider


def test_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    provider = LocalKeyProvider(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kek, wrapped = provider.wrap(b"s" * 32, aad=b"scope")
    again = LocalKeyProvider(path, create=False)
    assert again.unwrap(kek, wrapped, aad=b"scope") == b"s" * 32


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_group_or_world_readable(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    LocalKeyProvider(path)
    os.chmod(path, mode)
    with pytest.raises(KeyProviderError, match="readable by group or others"):
        LocalKeyProvider(path)


def test_refuses_symlink_and_malformed(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    LocalKeyProvider(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeyProviderError, match="symlink"):
        LocalKeyProvider(link)
    bad = tmp_path / "bad.key"
    bad.write_text("{not json")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyProviderError, match="malformed"):
        LocalKeyProvider(bad)
    with pytest.raises(KeyProviderError, match="missing"):
        LocalKeyProvider(tmp_path / "absent.key", create=False)


def test_wrapped_secret_is_bound_to_its_scope(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path / "master.key")
    kek, wrapped = provider.wrap(b"s" * 32, aad=b"subject|d|alice")
    with pytest.raises(DecryptionFailed):
        provider.unwrap(kek, wrapped, aad=b"subject|d|bob")


def test_rotate_then_retire_makes_old_wraps_useless(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    provider = LocalKeyProvider(path)
    old, wrapped = provider.wrap(b"s" * 32, aad=b"a")
    new = provider.rotate()
    assert new != old and provider.current_kek_id() == new
    assert provider.unwrap(old, wrapped, aad=b"a") == b"s" * 32  # still usable until retired
    with pytest.raises(KeyProviderError):
        provider.retire(new)
    provider.retire(old)
    assert provider.kek_ids() == [new]
    with pytest.raises(DecryptionFailed):
        provider.unwrap(old, wrapped, aad=b"a")
    # The retirement is durable: the file no longer holds the old KEK.
    reloaded = LocalKeyProvider(path, create=False)
    assert reloaded.kek_ids() == [new]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
