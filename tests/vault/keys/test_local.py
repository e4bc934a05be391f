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


def test_a_second_process_follows_a_rotation_and_forgets_a_retired_kek(tmp_path: Path) -> None:
    """Two processes on one master key file (two API instances): what one rotates the other
    unwraps at once (an unknown KEK id reloads the file) and adopts at its next refresh (the
    heartbeat); what one retires the other drops from memory at its next refresh."""
    path = tmp_path / "master.key"
    first, second = LocalKeyProvider(path), LocalKeyProvider(path)
    assert first.rotate() == "k2"
    kek, wrapped = first.wrap(b"s" * 32, aad=b"scope")
    assert kek == "k2" and second.current_kek_id() == "k1"
    assert second.unwrap(kek, wrapped, aad=b"scope") == b"s" * 32
    second.refresh()
    assert second.current_kek_id() == "k2"
    first.retire("k1")
    assert second.kek_ids() == ["k1", "k2"]  # it holds k1 until it looks again
    second.refresh()
    assert second.kek_ids() == ["k2"]
    with pytest.raises(KeyProviderError, match="current"):
        second.retire("k2")


def test_rotations_by_two_processes_never_overwrite_each_others_kek(tmp_path: Path) -> None:
    """Each process once computed the next KEK id from its own copy: two rotations from two
    stale copies both wrote a `k2`, the second replacing the first, and every secret already
    wrapped under the first `k2` was lost. A rotation reads the file under a lock first."""
    path = tmp_path / "master.key"
    first, second = LocalKeyProvider(path), LocalKeyProvider(path)
    assert first.rotate() == "k2"
    kek, wrapped = first.wrap(b"t" * 32, aad=b"scope")
    assert second.rotate() == "k3"
    fresh = LocalKeyProvider(path, create=False)
    assert fresh.kek_ids() == ["k1", "k2", "k3"] and fresh.current_kek_id() == "k3"
    assert fresh.unwrap(kek, wrapped, aad=b"scope") == b"t" * 32
