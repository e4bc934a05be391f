"""SoftHSM2 for tests: find (or install) the PKCS#11 module and initialise a fresh token.

Why a fresh token per use: SoftHSM keeps its tokens in the directory named by the config file
that SOFTHSM2_CONF points at, so a temp config with its own tokendir isolates each test from the
machine's tokens and from every other test. The module reads SOFTHSM2_CONF when it is first
loaded (C_Initialize), hence one process-wide config for a test session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
_APT_TIMEOUT_S = 600


class SoftHsmUnavailable(Exception):
    """SoftHSM2 is missing and could not be installed; the message says why (for pytest.skip)."""


@dataclass(frozen=True)
class SoftHsmToken:
    module_path: str
    label: str
    pin: str
    so_pin: str


def _find_module() -> str | None:
    return next((p for p in _CANDIDATES if Path(p).is_file()), None)


def _apt_install() -> None:
    cmd = ["apt-get", "install", "-y", "softhsm2"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, capture_output=True, timeout=_APT_TIMEOUT_S).returncode == 0:
        return
    # Only when the package lists are stale or absent: update costs a network round trip.
    subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=_APT_TIMEOUT_S)
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=_APT_TIMEOUT_S)
    if done.returncode != 0:
        raise SoftHsmUnavailable("apt-get install softhsm2 failed (no network or no package?)")


def ensure_module() -> str:
    """Path of libsofthsm2.so, installing the Debian package when missing and running as root."""
    found = _find_module()
    if found is not None and shutil.which("softhsm2-util"):
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SoftHsmUnavailable("SoftHSM2 is not installed and cannot be (not root or no apt)")
    _apt_install()
    found = _find_module()
    if found is None or not shutil.which("softhsm2-util"):
        raise SoftHsmUnavailable("softhsm2 installed but libsofthsm2.so not found")
    return found


def configure(root: Path) -> None:
    """Point SoftHSM at a config whose token directory is under `root` (call before loading)."""
    tokendir = root / "tokens"
    tokendir.mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)


def init_token(
    module_path: str, label: str, *, pin: str = "1234", so_pin: str = "12345678"
) -> SoftHsmToken:
    """Initialise a new token in the first free slot of the configured token directory."""
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            so_pin,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return SoftHsmToken(module_path=module_path, label=label, pin=pin, so_pin=so_pin)
