"""A cluster of replica processes on one host: spawn, wait until ready, kill, pause, restart.

What it is for: `civis-vault ledger up`, the process tests and the benchmark all need real
replica processes (separate interpreters, real sockets, real fsync) that they can SIGKILL,
SIGSTOP and restart from their write-ahead log. Each replica is
`python -m ledger_bridge.node --config node-<i>.toml`, exactly what an operator runs on a
separate host, with its output in `<dir>/logs/node-<i>.log`.

What it must never do: regenerate the keys of an existing directory (see `genesis`), or leave
children behind: `close()` kills what it started, and is called from `__exit__`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from ledger_bridge import genesis as gen
from ledger_bridge import tls
from ledger_bridge.client import TcpClientTransport
from ledger_bridge.crypto import SigningKey
from ledger_bridge.transport import HEADER, encode_frame, pack, split_address, unpack

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


def probe_status(
    address: str,
    timeout_s: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> dict[str, Any] | None:
    """One synchronous `status` request to a node's client port (TLS with `ssl_context`,
    checking the certificate names `server_name`); None when it is not up. Status is the one
    read that needs no proven key."""
    host, port = split_address(address)
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout_s))
            if ssl_context is not None:
                sock = stack.enter_context(
                    ssl_context.wrap_socket(sock, server_hostname=server_name)
                )
            sock.sendall(encode_frame(pack({"op": "status", "id": 0})))
            for _ in range(2):  # the replica's challenge comes first
                reply = _recv_frame(sock)
                if isinstance(reply, dict) and isinstance(reply.get("status"), dict):
                    status: dict[str, Any] = reply["status"]
                    return status
    except Exception:  # refused, reset, a TLS failure, garbage: not up, as far as we know
        return None
    return None


def _recv_frame(sock: socket.socket) -> Any:
    (length,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if length > 1 << 20:
        raise ValueError("status frame over 1 MiB")
    return unpack(_recv_exact(sock, length))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class Cluster:
    """n replica processes from a genesis directory (generated when missing)."""

    def __init__(
        self,
        directory: Path,
        replicas: int = 4,
        base_port: int = 26600,
        use_tls: bool = False,
        params: dict[str, Any] | None = None,
        python: str = sys.executable,
        app_genesis: dict[str, Any] | None = None,
        client_tls: bool | None = None,
        launcher: Callable[[int], list[str]] | None = None,
        hosts: list[str] | None = None,
    ) -> None:
        self.directory = directory
        # The command a replica's command line runs under (`launcher(i)` + argv), e.g. the
        # `ip netns exec` of a test host: one machine standing for several.
        self._launcher = launcher
        if not (directory / gen.GENESIS_FILE).exists():
            gen.create_local(
                directory,
                replicas,
                base_port=base_port,
                use_tls=use_tls,
                params=params,
                app_genesis=app_genesis,
                client_tls=client_tls,
                hosts=hosts,
            )
        self.node_files = sorted(
            directory.glob("node-*.toml"), key=lambda p: int(p.stem.split("-")[1])
        )
        self.genesis = gen.load_genesis(directory / gen.GENESIS_FILE)
        if len(self.node_files) != self.genesis.n:
            raise gen.GenesisError(f"{directory}: one node-<i>.toml per validator expected")
        self._python = python
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        # The client ports speak TLS unless the node files say otherwise (`create_local`'s
        # `client_tls`); this launcher's own status probes follow what its files say.
        insecure = gen.load_node_config(self.node_files[0]).insecure_client_port
        ca = self.genesis.tls_ca
        self.client_ssl = tls.reader_context(ca) if ca is not None and not insecure else None
        (directory / "logs").mkdir(mode=0o700, exist_ok=True)
        # A directory made by an older launcher (or copied in) is tightened as well.
        gen.make_private(directory)

    @property
    def n(self) -> int:
        return self.genesis.n

    def client_addresses(self) -> list[str]:
        return [v.client_address for v in self.genesis.validators]

    def reader_key(self) -> SigningKey:
        """The operator's read key `create_local` listed in every node file."""
        return gen.load_signing_key(self.directory / gen.READER_KEY_FILE)

    def client_transport(self, reader: SigningKey | None = None) -> TcpClientTransport:
        """A transport to the client ports, TLS when the cluster has it, reading with
        `reader` or else the operator's read key."""
        return TcpClientTransport(
            self.client_addresses(),
            self.client_ssl,
            reader=reader or self.reader_key(),
            chain_id=self.genesis.chain_id,
        )

    def start(self, ids: list[int] | None = None) -> None:
        for i in ids if ids is not None else range(self.n):
            # A SIGINT/SIGTERM handler that raises (`ledger up`, `up`) must not fire between
            # the fork and the bookkeeping: that child would be one `close()` never stops. The
            # child inherits the mask; the node unblocks both once its handlers are set.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                self._spawn(i)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _spawn(self, i: int) -> None:
        assert i not in self._procs or self._procs[i].poll() is not None, f"{i} running"
        log_path = self.directory / "logs" / f"node-{i}.log"
        log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._procs[i] = subprocess.Popen(
            [
                *(self._launcher(i) if self._launcher is not None else []),
                *(self._python, "-m", "ledger_bridge.node", "--config", str(self.node_files[i])),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in `ledger up` reaches us, we stop them
            # What a replica creates (its database, write-ahead log, snapshots) is its own.
            umask=0o077,
        )
        log.close()

    def wait_ready(self, ids: list[int] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until every listed replica answers `status` on its client port."""
        deadline = time.monotonic() + timeout_s
        pending = set(ids if ids is not None else range(self.n))
        while pending:
            for i in sorted(pending):
                proc = self._procs.get(i)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"replica {i} exited with {proc.returncode}; {self.log(i)}")
                if self.status(i, 0.5) is not None:
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"replicas {sorted(pending)} not ready in {timeout_s}s")
            if pending:
                time.sleep(0.05)

    def status(self, i: int, timeout_s: float = 1.0) -> dict[str, Any] | None:
        address = self.genesis.validators[i].client_address
        return probe_status(address, timeout_s, self.client_ssl, f"node-{i}")

    def log(self, i: int) -> Path:
        return self.directory / "logs" / f"node-{i}.log"

    def pid(self, i: int) -> int:
        return self._procs[i].pid

    def running(self, i: int) -> bool:
        proc = self._procs.get(i)
        return proc is not None and proc.poll() is None

    def _signal(self, i: int, sig: signal.Signals) -> None:
        proc = self._procs[i]
        if proc.poll() is None:
            proc.send_signal(sig)

    def kill(self, i: int) -> None:
        """SIGKILL: no clean-up, no flush; the WAL is all the replica keeps."""
        self._signal(i, signal.SIGKILL)
        self._procs[i].wait()

    def pause(self, i: int) -> None:
        self._signal(i, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)

    def stop(self, i: int) -> None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        proc = self._procs.get(i)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, i: int, wait: bool = True) -> None:
        self.stop(i)
        self.start([i])
        if wait:
            self.wait_ready([i])

    def close(self) -> None:
        """SIGTERM to every replica at once, then one shared wait: stopping them one by one
        would take up to STOP_TIMEOUT_S each."""
        live = [p for p in self._procs.values() if p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
