"""`civis-vault bench keys --json`: wrap and unwrap per second, local provider vs SoftHSM2.

Why: every upload and read unwraps three secrets per (upload, subject) (cached for one call),
and rotation rewraps every live secret, so the provider's per-wrap cost bounds both. The HSM
figure is for SoftHSM2 (software, in-process); a network HSM adds a round trip per call.
Needs libsofthsm2.so and softhsm2-util (Debian package softhsm2); the HSM half is reported as
skipped without them. `--records` sets the number of operations (default 5000).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from vault.keys import KeyProvider, LocalKeyProvider

_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
_OPS_MAX = 1_000_000


def _measure(provider: KeyProvider, n: int) -> dict[str, float]:
    secret = os.urandom(32)
    aads = [f"subject|bench|s{i}".encode() for i in range(n)]
    t0 = time.perf_counter()
    wrapped = [provider.wrap(secret, aad=aad) for aad in aads]
    t1 = time.perf_counter()
    for (kid, w), aad in zip(wrapped, aads, strict=True):
        if provider.unwrap(kid, w, aad=aad) != secret:
            raise AssertionError("unwrap returned another secret")
    t2 = time.perf_counter()
    return {"wrap_per_s": round(n / (t1 - t0)), "unwrap_per_s": round(n / (t2 - t1))}


def _softhsm(root: Path, n: int) -> dict[str, Any]:
    module = next((m for m in _MODULES if Path(m).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        return {"skipped": "softhsm2 not installed (apt-get install softhsm2)"}
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the module when it is first loaded
    pin, so_pin = os.urandom(8).hex(), os.urandom(8).hex()
    init = ["softhsm2-util", "--init-token", "--free", "--label", "bench"]
    subprocess.run(
        [*init, "--pin", pin, "--so-pin", so_pin],
        check=True,
        capture_output=True,
        timeout=60,
    )
    from vault.keys.pkcs11 import Pkcs11KeyProvider

    provider = Pkcs11KeyProvider(module, "bench", pin, key_label_prefix="bench-")
    try:
        return {"module": module, **_measure(provider, n)}
    finally:
        provider.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = min(args.records or 5000, _OPS_MAX)
    with tempfile.TemporaryDirectory(prefix="civis-bench-keys-") as tmp:
        root = Path(tmp)
        local = _measure(LocalKeyProvider(root / "master.key"), n)
        (root / "hsm").mkdir()
        hsm = _softhsm(root / "hsm", n)
    return {"benchmark": "keys", "operations": n, "local": local, "pkcs11_softhsm2": hsm}
