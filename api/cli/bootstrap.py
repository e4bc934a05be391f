"""The ledger side of `civis-vault up`: the first-run founding of a local cooperative, and the
gateway and readiness probe for whichever ledger the API uses.

Why a first-run bootstrap at all: the consent contracts accept a transaction only from a
member, and the first members can only come from the genesis (governance needs members to
vote). So before the genesis is written, the vault's own ledger key must exist (the vault
anchors uploads and records erasures: a founding member, role "vault") and so must the DPO's
(the DPO erases and audits: a founding member, role "dpo"); a key created after the genesis
would be locked out. The three colleges each host one validator (create_local deals them out).
Last, the DPO needs a way into the API: one API key bound to the DPO's public key, printed once.
The founders get their names in the members' directory (api/services/directory.py), so the
DPO's page shows "Validator 2 (citizens college)" rather than a key.

Why a pending marker: the genesis is written before the database holds the DPO's API key. If
`up` dies between the two, the next start still sees a genesis and would skip the first run;
`bootstrap.pending` (the DPO's public key, no secret) says the API key is still owed.

What it must never do: overwrite an existing genesis or key file (new keys under an existing
chain fork it or lock the vault out), print or log a private key, or print an API token twice.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.cli.layout import keys_dir, ledger_dir
from api.client.wallet import load_wallet, new_wallet
from api.services.directory import NAME_MAX, NameIn, set_name
from api.services.gateway import VAULT_KEY_FILE, LedgerGateway, load_or_create_key
from api.services.keys import IssuedKey, create_key
from api.services.readiness import LedgerQuorumProbe
from api.services.records_of_processing import ControllerIn, set_controller
from ledger_bridge import genesis as gen
from ledger_bridge import ports
from ledger_bridge.cluster import Cluster
from ledger_bridge.crypto import SigningKey
from vault import db

# The contracts as the replicated application; batches close at 100 requests or after 10 ms.
# Requests of clients that take turns are proposed at once (`Replica._propose_now`);
# overlapping ones wait up to 10 ms to share a PBFT round, which under load costs each answer
# far less of the replicas' CPU than the wait adds to its latency (docs/BENCHMARKS.md,
# "Access"). Written into the genesis at a chain's founding: a chain keeps its own.
LEDGER_PARAMS: dict[str, Any] = {"app": "contracts", "batch_size_max": 100, "batch_wait_ms": 10}
DEFAULT_REPLICAS = 4
VAULT_COLLEGE = "providers"
DPO_COLLEGE = "services"
PENDING_FILE = "bootstrap.pending"
DPO_KEY_FILE = "dpo.key"
LOOPBACK = "127.0.0.1"
CLIENT_PORT_OFFSET = 100  # create_local: client port of replica i is base + 100 + i
SUPERVISE_INTERVAL_S = 0.5
RESTART_BACKOFF_MIN_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0

_log = logging.getLogger(__name__)


class BootstrapError(Exception):
    """`up` cannot start the ledger side; the message is fit for the operator's terminal."""


def choose_base_port(replicas: int, host: str = LOOPBACK, avoid: Collection[int] = ()) -> int:
    """A base port whose 2n ports (peers at +i, clients at +100+i) are free right now, outside
    the kernel's ephemeral range (`ledger_bridge.ports`: an outgoing connection could hold a
    port in it when a replica starts), and none in `avoid`: the API's own port, which uvicorn
    binds only after the replicas have started, so it is free when the block is chosen.

    Chosen once, on the first run, and kept in the genesis: the replicas' addresses are part of
    the chain's identity for its clients, so later runs reuse them.
    """
    try:
        return ports.cluster_block(replicas, CLIENT_PORT_OFFSET, host, avoid)
    except RuntimeError as exc:
        raise BootstrapError(f"{exc} for {replicas} replicas") from None


def founding_app_genesis(vault_public_key: str, dpo_public_key: str) -> dict[str, Any]:
    """The contracts' founding members besides the validators: the vault and the DPO."""
    return {
        "members": [
            {"public_key": vault_public_key, "role": "vault", "college": VAULT_COLLEGE},
            {"public_key": dpo_public_key, "role": "dpo", "college": DPO_COLLEGE},
        ]
    }


def _load_or_create_dpo_key(path: Path) -> SigningKey:
    # A DPO key left from an interrupted first run is kept: it may already be in someone's hands.
    return load_wallet(path) if path.exists() else new_wallet(path)


@dataclass(frozen=True)
class Founding:
    """What the first run created; public keys only."""

    chain_id: str
    vault_public_key: str
    dpo_public_key: str
    dpo_key_file: Path


def found_local_ledger(
    data_dir: Path, replicas: int, avoid_ports: Collection[int] = ()
) -> Founding:
    """First run: vault and DPO keys, then a genesis naming them as founders, its replicas on
    ports none of which is in `avoid_ports` (`choose_base_port`).

    The chain id carries a random suffix so that transactions signed for one local chain can
    never be replayed on another one created later in a wiped data directory.
    """
    if replicas < 4 or (replicas - 1) % 3 or replicas > gen.REPLICAS_MAX:
        raise BootstrapError(f"replicas must be 3f+1 with f >= 1, at most {gen.REPLICAS_MAX}")
    keys = keys_dir(data_dir)
    vault_key = load_or_create_key(keys / VAULT_KEY_FILE)
    dpo_file = keys / DPO_KEY_FILE
    dpo_key = _load_or_create_dpo_key(dpo_file)
    vault_pub, dpo_pub = vault_key.public_key.hex(), dpo_key.public_key.hex()
    # Written before the genesis: if we die in between, the next run still owes the API key.
    gen.write_private_file(data_dir / PENDING_FILE, (dpo_pub + "\n").encode())
    chain_id = f"civis-{secrets.token_hex(4)}"
    gen.create_local(
        ledger_dir(data_dir),
        replicas,
        base_port=choose_base_port(replicas, avoid=avoid_ports),
        host=LOOPBACK,
        chain_id=chain_id,
        use_tls=True,
        params=LEDGER_PARAMS,
        app_genesis=founding_app_genesis(vault_pub, dpo_pub),
    )
    return Founding(chain_id, vault_pub, dpo_pub, dpo_file)


def issue_pending_dpo_key(database_url: str, data_dir: Path) -> IssuedKey | None:
    """The DPO's first API key if the first run still owes it, else None (never twice)."""
    pending = data_dir / PENDING_FILE
    if not pending.exists():
        return None
    dpo_public_key = pending.read_text().strip()
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            issued = create_key(session, member_id=dpo_public_key, role="dpo")
    finally:
        engine.dispose()
    pending.unlink()
    return issued


def record_controller(database_url: str, details: ControllerIn) -> bool:
    """The controller's record (Art. 30(1)(a)) as `up` was given it, written once: a record
    already set (an earlier run, `civis-vault controller set`) is left alone. Whether it wrote.
    """
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            return set_controller(session, details, only_if_unset=True)
    finally:
        engine.dispose()


def founders_names(genesis: gen.Genesis, dpo_name: str = "") -> dict[str, NameIn]:
    """The founding members' names: the vault (the cooperative's operations key), the DPO
    (as the controller's record names them, if it does) and each college's validator."""
    out: dict[str, NameIn] = {}
    for member in genesis.app_genesis.get("members", []):
        role = member.get("role")
        if role == "vault":
            out[str(member["public_key"])] = NameIn(display_name="Civis Vault operations")
        elif role == "dpo":
            name = "Data Protection Officer" + (f" ({dpo_name})" if dpo_name else "")
            out[str(member["public_key"])] = NameIn(display_name=name[:NAME_MAX])
    for v in genesis.validators:
        out[v.public_key.hex()] = NameIn(display_name=f"Validator {v.id} ({v.college} college)")
    return out


def name_founders(database_url: str, genesis: gen.Genesis, dpo_name: str = "") -> None:
    """Give the founders their names in the directory, once: a name the DPO changed stays."""
    engine = db.make_engine(database_url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            for member_id, name in founders_names(genesis, dpo_name).items():
                set_name(session, member_id, name, only_if_unset=True)
    finally:
        engine.dispose()


def quorum_probe(gateway: LedgerGateway) -> LedgerQuorumProbe:
    """/readyz's ledger check: 2f+1 replicas answer a status call."""
    return LedgerQuorumProbe(gateway.status, gateway.genesis.n)


class ReplicaSupervisor:
    """Restarts a local replica process that exited on its own, with a growing delay.

    Why: `up` is the whole system on one machine, so nobody else would notice a replica that
    crashed (a bug, the OOM killer) and stayed down, leaving the cluster one fault from a halt.
    A restarted replica reloads its write-ahead log and catches up from the others. The delay
    (1 s doubling to 30 s, back to 1 s once a replica stayed up that long) keeps a replica that
    cannot start (its port taken, its store unreadable) from spinning.

    Runs on its own thread; `stop()` joins it, and must run before `Cluster.close()` so the
    two never race over the processes.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        interval_s: float = SUPERVISE_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cluster = cluster
        self._interval_s = interval_s
        self._monotonic = monotonic
        now = monotonic()
        self._started_at = dict.fromkeys(range(cluster.n), now)
        self._backoff_s = dict.fromkeys(range(cluster.n), RESTART_BACKOFF_MIN_S)
        self._next_try = dict.fromkeys(range(cluster.n), now)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="replica-supervisor", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _main(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.check()

    def check(self) -> None:
        """One pass: restart every replica that is down and whose delay has passed."""
        now = self._monotonic()
        for i in range(self._cluster.n):
            if self._cluster.running(i) or now < self._next_try[i]:
                continue
            if now - self._started_at[i] >= RESTART_BACKOFF_MAX_S:
                self._backoff_s[i] = RESTART_BACKOFF_MIN_S
            _log.warning("replica %d exited; restarting it (see %s)", i, self._cluster.log(i))
            self._cluster.start([i])
            self.restarts += 1
            self._started_at[i] = now
            self._next_try[i] = now + self._backoff_s[i]
            self._backoff_s[i] = min(2 * self._backoff_s[i], RESTART_BACKOFF_MAX_S)


@dataclass
class RunningLedger:
    gateway: LedgerGateway
    directory: Path
    cluster: Cluster | None  # None: external replicas, started by their operators
    founding: Founding | None  # set on the first run only
    warnings: list[str]

    def addresses(self) -> list[str]:
        return [v.client_address for v in self.gateway.genesis.validators]


@contextmanager
def open_ledger(
    data_dir: Path,
    *,
    replicas: int | None = None,
    external_dir: Path | None = None,
    avoid_ports: Collection[int] = (),
) -> Iterator[RunningLedger]:
    """The ledger the API talks to, closed (gateway, then our replicas) on exit.

    Without `external_dir`: the local cluster under `<data_dir>/ledger`, founded on the first
    run and started as replica processes, ready before this yields, restarted if one exits.
    With it: an existing genesis of replicas run elsewhere; nothing is started or founded, and
    /readyz tells when a quorum answers. A cluster founded now takes no port of `avoid_ports`
    (the API's, bound after it).
    """
    founding: Founding | None = None
    warnings: list[str] = []
    with ExitStack() as stack:
        cluster: Cluster | None = None
        if external_dir is None:
            directory = ledger_dir(data_dir)
            if not (directory / gen.GENESIS_FILE).exists():
                founding = found_local_ledger(data_dir, replicas or DEFAULT_REPLICAS, avoid_ports)
            cluster = stack.enter_context(Cluster(directory))
            _require_contracts(directory, cluster.genesis)
            _refuse_running_replicas(cluster)
            if replicas is not None and replicas != cluster.n:
                warnings.append(
                    f"{directory} holds a {cluster.n}-replica chain; --replicas {replicas} "
                    "applies to a new data directory only"
                )
            cluster.start()
            try:
                cluster.wait_ready()
            except (TimeoutError, RuntimeError) as exc:
                raise BootstrapError(f"the ledger did not start: {exc}") from None
            supervisor = ReplicaSupervisor(cluster)
            supervisor.start()
            stack.callback(supervisor.stop)  # unwinds before the cluster closes
        else:
            directory = external_dir
            if not (directory / gen.GENESIS_FILE).exists():
                raise BootstrapError(f"{directory} has no {gen.GENESIS_FILE}")
            _require_contracts(directory, gen.load_genesis(directory / gen.GENESIS_FILE))
        gateway = LedgerGateway.from_directory(directory, keys_dir(data_dir))
        stack.callback(gateway.close)
        if not _is_vault_member(gateway):
            warnings.append(
                f"the vault's ledger key {gateway.vault_id.hex()} is not a founding member "
                f"of {gateway.chain_id}: the contracts refuse its transactions until "
                "governance admits it (role vault)"
            )
        yield RunningLedger(gateway, directory, cluster, founding, warnings)


def _require_contracts(directory: Path, genesis: gen.Genesis) -> None:
    """The API speaks the consent contracts; a chain of another application (say, the key-value
    one `civis-vault ledger up` makes in the same default directory) cannot serve it."""
    app = genesis.params.get("app", "kv")
    if app != LEDGER_PARAMS["app"]:
        raise BootstrapError(
            f"the chain in {directory} runs the application {app!r}, not the consent contracts; "
            "give `up` another --data-dir, or --ledger-dir of a contracts chain"
        )


def _refuse_running_replicas(cluster: Cluster) -> None:
    """Stop before starting a replica whose address already answers.

    That is a replica left by an `up` that was SIGKILLed (a replica runs in its own session, so
    it outlives a killed parent): our new process would fail to bind while the old one kept
    answering, and nobody would stop the old one.
    """
    for i, address in enumerate(cluster.client_addresses()):
        if cluster.status(i, 0.5) is not None:
            raise BootstrapError(
                f"a replica of {cluster.directory} already answers on {address}: another `up` "
                "runs on this data directory, or left its replicas behind; stop them first"
            )


def _is_vault_member(gateway: LedgerGateway) -> bool:
    members = gateway.genesis.app_genesis.get("members", [])
    mine = gateway.vault_id.hex()
    return any(
        isinstance(m, dict) and m.get("public_key") == mine and m.get("role") == "vault"
        for m in members
    )
