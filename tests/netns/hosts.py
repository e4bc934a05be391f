"""Test hosts: one network namespace per host, joined by an emulated wide-area network.

What it gives a test: `Network({"r0": "site-a", "api": "vault", ...})` builds one namespace per
host, each with one interface `eth0` at 10.99.0.<i+1>/24, all plugged into `wire`, a userspace
switch that applies a latency, jitter and loss profile to every ordered pair of hosts, and
cuts and heals links (`wire.py` says why userspace: this kernel has no netem). Hosts in one
site talk at LAN speed; `wan(Profile(25, 2, 0.01))` puts 25 ms ± 2 ms and 1 % loss on every
pair of hosts in different sites, each way. `host.exec(argv)` starts a process inside a host,
`host.entered()` moves the calling thread there (sockets and threads it creates stay there).

What it must never do: touch the machine's own interfaces or let a packet out. The switch and
its TAP devices live in a namespace of the harness, the TAPs are moved into the hosts'
namespaces, and the hosts have no route anywhere but their own /24. Nothing is left behind:
`close()` (the context manager's exit, and `atexit`) kills every process in the namespaces and
deletes them, and a harness killed with SIGKILL is cleaned up by the next one, which deletes
every namespace of the `cvn` prefix whose owner process is gone (the owner's pid is in the
name, so two harnesses running at once leave each other alone).

Root only (namespaces, TAP devices): `require_root()` skips a test with a clear message
elsewhere; CI runs as root.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.netns import wire

PREFIX = "cvn"  # every namespace of this harness: cvn<owner pid>x<serial>-<host>
NETNS_DIR = Path("/run/netns")
SUBNET = "10.99.0"  # the hosts' /24: a private range, reachable only inside the namespaces
CHECKOUT = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
_serial = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def can_run() -> str | None:
    """None when this process can build test hosts, else why not (for a skip message)."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, TAP devices); CI runs as root"
    if not Path("/dev/net/tun").exists():
        return "test hosts need /dev/net/tun"
    missing = [tool for tool in ("ip", "setpriv") if shutil.which(tool) is None]
    if missing:
        return f"test hosts need {' and '.join(missing)} (iproute2, util-linux)"
    return None


def require_root() -> None:
    import pytest

    reason = can_run()
    if reason is not None:
        pytest.skip(reason)


def _ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        ["ip", *args], input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass(frozen=True)
class Profile:
    """A link's one-way behaviour, as netem would apply it on the sender's interface."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # probability that a frame is lost, 0..1


@dataclass(frozen=True)
class Host:
    name: str
    site: str
    port: int  # the switch port, and the last byte of the address minus one
    netns: str

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.port + 1}"

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def exec(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """A process inside this host (its own session, so a test can signal it alone)."""
        popen.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(argv), **popen)

    def run(self, argv: Sequence[str], timeout: float = 120, **kwargs: Any) -> str:
        done = subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{self.name}: {' '.join(argv)} exited {done.returncode}\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return str(done.stdout)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread inside this host's namespace until the block ends. Sockets it
        opens and threads it starts meanwhile stay in the namespace for good."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(NETNS_DIR / self.netns, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in out.split()]


class Network:
    """The hosts and their wire; see the module docstring. A context manager."""

    def __init__(self, hosts: Mapping[str, str], *, seed: int = 0) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}x{next(_serial)}"
        self.hosts = {
            name: Host(name, site, port, f"{self.prefix}-{name}")
            for port, (name, site) in enumerate(hosts.items())
        }
        self.wire_netns = f"{self.prefix}-wire"
        self._seed = seed
        self._wire: subprocess.Popen[str] | None = None
        self._closed = False

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        cleanup_leftovers()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building -------------------------------------------------------------------------

    def _build(self) -> None:
        _ip("netns", "add", self.wire_netns)
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
        env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
        argv = [sys.executable, "-m", "tests.netns.wire", "--ports", str(len(self.hosts))]
        self._wire = subprocess.Popen(
            ["ip", "netns", "exec", self.wire_netns, *argv, "--seed", str(self._seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        ready = self._read_answer()
        if not ready.get("ready"):
            raise RuntimeError(f"the wire did not start: {ready}")
        for host in self.hosts.values():
            _ip("-n", self.wire_netns, "link", "set", wire.tap_name(host.port), "netns", host.netns)
            _ip("-n", host.netns, "-batch", "-", stdin=self._host_setup(host))
            self._sysctl(host, "net.ipv6.conf.all.disable_ipv6", "1")

    def _host_setup(self, host: Host) -> str:
        """`ip -batch` lines: eth0 with its MAC and address, and every neighbour's MAC
        written down (no ARP: a cut link must not also starve the neighbour tables)."""
        lines = [
            "link set lo up",
            f"link set {wire.tap_name(host.port)} name eth0",
            f"link set eth0 address {wire.mac_text(host.port)}",
            f"addr add {host.address}/24 dev eth0",
            "link set eth0 up",
        ]
        lines += [
            f"neigh replace {other.address} lladdr {wire.mac_text(other.port)} "
            "dev eth0 nud permanent"
            for other in self.hosts.values()
            if other is not host
        ]
        return "\n".join(lines) + "\n"

    def _sysctl(self, host: Host, key: str, value: str) -> None:
        with host.entered():
            Path("/proc/sys", *key.split(".")).write_text(value)

    # -- the wire ---------------------------------------------------------------------------

    def _read_answer(self) -> dict[str, Any]:
        assert self._wire is not None and self._wire.stdout is not None
        line = self._wire.stdout.readline()
        if not line:
            raise RuntimeError("the wire exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _control(self, **cmd: Any) -> dict[str, Any]:
        assert self._wire is not None and self._wire.stdin is not None
        stdin: IO[str] = self._wire.stdin
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        answer = self._read_answer()
        if not answer.get("ok"):
            raise RuntimeError(f"the wire refused {cmd}: {answer}")
        return answer

    def _ports(self, names: Iterable[str]) -> list[int]:
        """Host names, or site names standing for every host of the site."""
        ports: list[int] = []
        for name in names:
            if name in self.hosts:
                ports.append(self.hosts[name].port)
            else:
                members = [h.port for h in self.hosts.values() if h.site == name]
                if not members:
                    raise KeyError(f"no host or site named {name!r}")
                ports += members
        return ports

    def link(self, src: Iterable[str], dst: Iterable[str], profile: Profile) -> None:
        """`profile` on every link from a host of `src` to a host of `dst` (one way)."""
        self._control(
            op="link",
            src=self._ports(src),
            dst=self._ports(dst),
            delay_ms=profile.delay_ms,
            jitter_ms=profile.jitter_ms,
            loss=profile.loss,
        )

    def wan(self, profile: Profile) -> None:
        """`profile` between every two hosts of different sites, both ways; LAN in a site."""
        sites = sorted({h.site for h in self.hosts.values()})
        for a in sites:
            others = [s for s in sites if s != a]
            if others:
                self.link([a], others, profile)
            self.link([a], [a], Profile())

    def cut(self, a: Iterable[str], b: Iterable[str]) -> None:
        """Every frame between a host of `a` and a host of `b` is lost, both ways, silently
        (a partition: no reset, no unreachable, as on a real WAN)."""
        a, b = list(a), list(b)
        self._control(op="cut", src=self._ports(a), dst=self._ports(b))
        self._control(op="cut", src=self._ports(b), dst=self._ports(a))

    def heal(self, a: Iterable[str], b: Iterable[str]) -> None:
        a, b = list(a), list(b)
        self._control(op="heal", src=self._ports(a), dst=self._ports(b))
        self._control(op="heal", src=self._ports(b), dst=self._ports(a))

    def isolate(self, name: str) -> list[str]:
        """Cut a host or a site from every other host; returns the other side."""
        inside = set(self._ports([name]))
        others = [h.name for h in self.hosts.values() if h.port not in inside]
        self.cut([name], others)
        return others

    def link_down(self, host: str) -> None:
        """The host's interface down: its own sends fail at once (unlike `cut`)."""
        _ip("-n", self.hosts[host].netns, "link", "set", "eth0", "down")

    def link_up(self, host: str) -> None:
        _ip("-n", self.hosts[host].netns, "link", "set", "eth0", "up")
        # Taking the interface down dropped the neighbour entries written down at start.
        lines = self._host_setup(self.hosts[host]).splitlines()
        _ip("-n", self.hosts[host].netns, "-batch", "-", stdin="\n".join(lines[5:]) + "\n")

    def wire_pids(self) -> list[int]:
        """The switch's process (`ip netns exec` execs it: one pid), for its CPU time."""
        return [] if self._wire is None else [self._wire.pid]

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._control(op="stats")["stats"]
        return stats

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        names = [h.netns for h in self.hosts.values()] + [self.wire_netns]
        _kill_namespaces(names)
        if self._wire is not None:
            with contextlib.suppress(Exception):
                assert self._wire.stdin is not None
                self._wire.stdin.close()
            try:
                self._wire.wait(5)
            except subprocess.TimeoutExpired:
                self._wire.kill()
                self._wire.wait(5)
            if self._wire.stdout is not None:
                self._wire.stdout.close()
        for name in names:
            _ip("netns", "del", name, check=False)


def _kill_namespaces(names: Iterable[str]) -> None:
    """SIGKILL every process in these namespaces (they may have children of their own,
    started by `ip netns exec`, that are not ours to wait for), and wait until none is left."""
    names = [n for n in names if (NETNS_DIR / n).exists()]
    deadline = time.monotonic() + 10
    while names and time.monotonic() < deadline:
        pids = [int(p) for n in names for p in _ip("netns", "pids", n, check=False).split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        for pid in pids:  # reap the ones that were our own children
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def _owner(netns: str) -> int | None:
    """The pid in a harness namespace's name, None for a namespace that is not one of ours."""
    if not netns.startswith(PREFIX):
        return None
    digits = netns[len(PREFIX) :].split("x", 1)[0]
    return int(digits) if digits.isdigit() else None


def cleanup_leftovers() -> list[str]:
    """Delete the namespaces (and kill the processes in them) of harnesses that died without
    cleaning up; those of a live owner, another test run perhaps, are left alone."""
    if not NETNS_DIR.exists():
        return []
    stale = []
    for entry in NETNS_DIR.iterdir():
        owner = _owner(entry.name)
        if owner is not None and not _alive(owner):
            stale.append(entry.name)
    _kill_namespaces(stale)
    for name in stale:
        _ip("netns", "del", name, check=False)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
