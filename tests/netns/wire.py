"""The wire between the test hosts: a switch that delays, jitters, loses and cuts frames.

Why a userspace switch and not a kernel bridge with `tc netem`: this machine's kernel (and so
CI's, which runs on the same kind of machine) is built without `sch_netem` and without any
other qdisc that can hold a packet back (no fq, no etf), and without nftables' queue
expression; what it has is TUN/TAP. So each host gets a TAP device whose other end is a file
descriptor of this process, and this process is the switch: every Ethernet frame a host sends
is read here, held for the link's one-way delay (plus jitter), dropped with the link's loss
probability or when the link is cut, and written to the destination host's TAP. The profile
is per ordered pair of ports, which is what netem on each host's veth would give, and more
(a partition can cut some pairs and leave others).

Frames keep their order on each link (a later frame is never delivered before an earlier one
of the same link, as on a real path, and as netem does with a rate): jitter delays a frame,
it does not reorder TCP segments into spurious retransmissions.

Run by `tests.netns.hosts.Network` inside a network namespace of its own (`ip netns exec`),
so its TAP devices are born there and moved into the hosts' namespaces: nothing is ever
created in the machine's own namespace. It exits when its standard input closes (the harness
ended, however it ended), and the TAP devices vanish with it.

Control, one JSON object a line on standard input, one JSON answer a line on standard output:
- `{"op": "link", "src": [i...], "dst": [j...], "delay_ms": d, "jitter_ms": j, "loss": p}`
- `{"op": "cut", "src": [...], "dst": [...]}` / `{"op": "heal", "src": [...], "dst": [...]}`
- `{"op": "stats"}`: frames forwarded, lost, dropped by cuts or full queues, per port.
Ports are numbered 0..n-1; the host on port i has the MAC address `mac(i)`.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
FRAME_BYTES_MAX = 65536
READS_PER_WAKE = 64  # frames read from one port before looking at the others
BROADCAST = b"\xff" * 6


def mac(port: int) -> bytes:
    """The MAC address of the host on `port`: locally administered, unicast."""
    return bytes([0x02, 0x00, 0x00, 0x00, port >> 8, port & 0xFF])


def mac_text(port: int) -> str:
    return ":".join(f"{b:02x}" for b in mac(port))


def tap_name(port: int) -> str:
    return f"tap{port}"


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


@dataclass
class Link:
    """One direction between two ports."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    cut: bool = False
    last_due: float = 0.0  # when its latest frame is due: later frames are not due before
    forwarded: int = 0
    lost: int = 0
    cut_drops: int = 0


@dataclass
class Switch:
    fds: list[int]
    rng: random.Random
    links: dict[tuple[int, int], Link] = field(default_factory=dict)
    queue: list[tuple[float, int, int, bytes]] = field(default_factory=list)
    seq: int = 0
    full_drops: int = 0
    unknown_drops: int = 0

    def __post_init__(self) -> None:
        n = len(self.fds)
        self.links = {(i, j): Link() for i in range(n) for j in range(n) if i != j}
        self.by_mac = {mac(i): i for i in range(n)}

    def receive(self, src: int, frame: bytes, now: float) -> None:
        if len(frame) < 14:
            return
        dst_mac = frame[:6]
        if dst_mac == BROADCAST or dst_mac[0] & 1:
            targets = [j for j in range(len(self.fds)) if j != src]
        else:
            dst = self.by_mac.get(dst_mac)
            if dst is None or dst == src:
                self.unknown_drops += 1
                return
            targets = [dst]
        for dst in targets:
            self._forward(src, dst, frame, now)

    def _forward(self, src: int, dst: int, frame: bytes, now: float) -> None:
        link = self.links[(src, dst)]
        if link.cut:
            link.cut_drops += 1
            return
        if link.loss and self.rng.random() < link.loss:
            link.lost += 1
            return
        link.forwarded += 1
        delay = link.delay_s
        if link.jitter_s:
            delay = max(0.0, delay + self.rng.uniform(-link.jitter_s, link.jitter_s))
        due = max(now + delay, link.last_due)
        link.last_due = due
        if due <= now:
            self._write(dst, frame)
            return
        self.seq += 1
        heapq.heappush(self.queue, (due, self.seq, dst, frame))

    def _write(self, dst: int, frame: bytes) -> None:
        try:
            os.write(self.fds[dst], frame)
        except (BlockingIOError, OSError):  # a full TAP queue, or the host's link is down
            self.full_drops += 1

    def deliver_due(self, now: float) -> float | None:
        """Write every frame due by `now`; the seconds until the next one, None if none."""
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, _, dst, frame = heapq.heappop(queue)
            self._write(dst, frame)
        return queue[0][0] - now if queue else None

    def control(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "stats":
            return {"ok": True, "stats": self.stats()}
        pairs = [
            (i, j) for i in cmd.get("src", []) for j in cmd.get("dst", []) if (i, j) in self.links
        ]
        for pair in pairs:
            link = self.links[pair]
            if op == "link":
                link.delay_s = float(cmd.get("delay_ms", 0)) / 1000
                link.jitter_s = float(cmd.get("jitter_ms", 0)) / 1000
                link.loss = float(cmd.get("loss", 0.0))
            elif op == "cut":
                link.cut = True
            elif op == "heal":
                link.cut = False
            else:
                return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True, "links": len(pairs)}

    def stats(self) -> dict[str, Any]:
        total = {"forwarded": 0, "lost": 0, "cut_drops": 0}
        for link in self.links.values():
            total["forwarded"] += link.forwarded
            total["lost"] += link.lost
            total["cut_drops"] += link.cut_drops
        return {
            **total,
            "full_drops": self.full_drops,
            "unknown_drops": self.unknown_drops,
            "queued": len(self.queue),
        }


def serve(switch: Switch) -> None:
    poller = select.epoll()
    port_of = {fd: i for i, fd in enumerate(switch.fds)}
    for fd in switch.fds:
        poller.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    poller.register(stdin, select.EPOLLIN)
    pending = b""
    wait: float | None = None
    while True:
        events = poller.poll(-1 if wait is None else max(wait, 0.0))
        now = time.monotonic()
        for fd, _ in events:
            if fd == stdin:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return  # the harness is gone: so are we, and the TAP devices with us
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        answer = switch.control(json.loads(line))
                        sys.stdout.write(json.dumps(answer) + "\n")
                        sys.stdout.flush()
                continue
            src = port_of[fd]
            for _ in range(READS_PER_WAKE):
                try:
                    frame = os.read(fd, FRAME_BYTES_MAX)
                except (BlockingIOError, OSError):
                    break
                switch.receive(src, frame, now)
        wait = switch.deliver_due(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fds = [open_tap(tap_name(i)) for i in range(args.ports)]
    sys.stdout.write(json.dumps({"ready": True, "taps": [tap_name(i) for i in range(args.ports)]}))
    sys.stdout.write("\n")
    sys.stdout.flush()
    serve(Switch(fds, random.Random(args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
