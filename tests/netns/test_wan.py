"""The production path over a wide-area network: four replicas, PostgreSQL and two API
instances on test hosts (network namespaces), 25 ms one way between sites and 1 % loss.

The system is deployed once for the module, as an operator would (tests/netns/deploy.py), and
the scenarios play on it in order, each leaving it healthy for the next: every scenario ends
with the four replicas voting in one view at one height, with contiguous block stores, and
the chain verified block by block on all four (tests/netns/checks.py).

1. The demo's stories pass through either API instance.
2. The primary's site is cut off: the others elect a new view within the timeout and go on
   committing uploads; healed, the old primary catches up; no acknowledged upload is lost.
3. A backup's site is cut off from the other replicas for a minute (its clients still reach
   it): it refuses queries as stale instead of serving its old state, the vault reads
   elsewhere; healed, it catches up with every block it missed.
4. An API instance is SIGKILLed in the middle of an upload's and of an erasure's recording:
   the other instance's outbox relay finishes each exactly once.
5. PostgreSQL restarts under load: 503 problem+json while it is down, recovery without help,
   no acknowledged upload lost.

Root only (network namespaces): skipped elsewhere with the reason; CI runs as root. The
default run keeps each cut short but the minority's minute (`--campaign` makes the others
longer too).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli.demo.common import Keyring, api_keys
from api.cli.demo.stage import Entity, Party, Stage
from api.client import CivisClient
from ledger_bridge.client import TcpClientTransport
from ledger_bridge.contracts import codec
from tests.netns import hosts
from tests.netns.checks import (
    Chains,
    UploadLoad,
    acknowledged_are_anchored,
    ndjson,
    settle,
    some_records,
)
from tests.netns.deploy import Deployment, cli
from tests.netns.hosts import Profile

pytestmark = pytest.mark.e2e

WAN = Profile(delay_ms=25, jitter_ms=2, loss=0.01)
# PBFT's own view-change timeout is 1 s (suspicion), doubled per failed attempt; over this WAN
# a new view is in place within a few seconds (`civis-vault bench wan` measures it).
NEW_VIEW_WITHIN_S = 15.0
MINORITY_CUT_S = 60.0
PROVIDER: Entity = ("the meter operator Watt", "providers", "provider")
CATEGORY, PURPOSE = "address", "proof-of-address"


@pytest.fixture(scope="module")
def campaign(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--campaign"))


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    reason = hosts.can_run()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("wan")
    with Deployment(root) as deployment, deployment.net["ops"].entered():
        deployment.net.wan(WAN)
        yield deployment


@dataclass
class Cast:
    provider: Party
    dataset: str
    clients: dict[str, CivisClient]  # the provider's key on each instance
    dpo: dict[str, CivisClient]  # the DPO's key on each instance


@pytest.fixture(scope="module")
def cast(d: Deployment) -> Iterator[Cast]:
    """A provider admitted by the colleges and its dataset, as the demo casts them."""
    tokens: dict[str, str] = {}
    with (
        api_keys(d.database_url, d.demo_dir()) as issue,
        CivisClient(d.api_url("api-a"), timeout_s=60) as api,
        contextlib.ExitStack() as stack,
    ):

        def remember(member: str, role: str) -> str:
            tokens[member] = issue(member, role)
            return tokens[member]

        stage = Stage(api, Keyring.load(d.demo_dir()), remember, say=lambda _: None)
        stage.open()
        (provider,) = stage.entities(PROVIDER)
        dataset = stage.dataset(provider, "wan-load", CATEGORY, PURPOSE)

        def clients(member: str) -> dict[str, CivisClient]:
            return {
                name: stack.enter_context(
                    CivisClient(d.api_url(name), api_key=tokens[member], timeout_s=60)
                )
                for name in d.apis
            }

        yield Cast(provider, dataset, clients(provider.id), clients(stage.dpo.id))


@pytest.fixture(scope="module")
def chains() -> Chains:
    return Chains()


def _demo(d: Deployment, api: str, *stories: str) -> str:
    argv = cli("demo", "--url", d.api_url(api), "--data-dir", str(d.demo_dir()))
    argv += ["--database-url", d.database_url]
    for story in stories:
        argv += ["--story", story]
    return d.net["ops"].run(argv, timeout=600, env=_env())


def _env() -> dict[str, str]:
    from tests.netns.deploy import _env as env

    return env()


def test_the_stories_pass_through_either_api_instance(d: Deployment, chains: Chains) -> None:
    for api, stories in (
        ("api-a", ("proof-of-address", "erasure")),
        ("api-b", ("road-maintenance", "eco-citizen")),
    ):
        out = _demo(d, api, *stories)
        assert "demo: every expected outcome happened." in out, out[-3000:]
        assert "4 of 4 replicas answering" in out
    chains.verify(d)


def _primary(d: Deployment) -> tuple[int, int]:
    status = settle(d)[0]
    return int(status["view"]), int(status["primary"])


def _new_view(d: Deployment, replicas: list[int], above: int, timeout_s: float) -> int:
    """The view `replicas` agree on, active, once it is above `above`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = [d.status(i) for i in replicas]
        views = {(s["view"], s["view_active"]) for s in statuses if s is not None}
        if len(views) == 1 and None not in statuses:
            view, active = views.pop()
            if view > above and active:
                return int(view)
        time.sleep(0.2)
    raise AssertionError(f"no new view among {replicas} within {timeout_s} s")


@contextlib.contextmanager
def _cut(d: Deployment, a: list[str], b: list[str]) -> Iterator[Callable[[], None]]:
    """`a` cut from `b`; yields the heal, which the way out calls if the scenario did not, so
    a scenario that fails leaves the next ones a whole network (one failure, not a cascade)."""
    healed = False

    def heal() -> None:
        nonlocal healed
        if not healed:
            d.net.heal(a, b)
            healed = True

    d.net.cut(a, b)
    try:
        yield heal
    finally:
        heal()


def test_partition_of_the_primarys_site(
    d: Deployment, cast: Cast, chains: Chains, campaign: bool
) -> None:
    view, primary = _primary(d)
    others = [i for i in range(4) if i != primary]
    site = f"college-{primary}"
    outside = [h for h in d.net.hosts if d.net.hosts[h].site != site]
    with UploadLoad(cast.clients, cast.dataset) as load:
        load.wait_for(3)
        with _cut(d, [site], outside) as heal:
            cut_at = time.monotonic()
            new_view = _new_view(d, others, view, NEW_VIEW_WITHIN_S)
            elected_s = time.monotonic() - cut_at
            before = len(load.acked)
            load.wait_for(5, timeout_s=60)  # the new primary goes on committing
            top = max(int(s["height"]) for s in map(d.status, others) if s is not None)
            time.sleep(30 if campaign else 3)
            heal()
        load.wait_for(2)
    after = settle(d)
    assert {s["view"] for s in after} == {new_view}
    assert all(s["height"] >= top for s in after)  # the old primary caught up
    assert len(load.acked) > before
    acknowledged_are_anchored(load, chains, d)
    print(f"view {view} -> {new_view} in {elected_s:.1f} s; {len(load.acked)} uploads acked")


def _query(d: Deployment, replica: int, q: dict[str, Any]) -> dict[str, Any]:
    """One query straight to one replica's client port, read with the operator's key."""
    import asyncio

    async def go() -> dict[str, Any]:
        transport = TcpClientTransport.for_genesis(d.genesis, d.reader())
        try:
            return await transport.call(replica, "query", {"request": codec.encode(q)})
        finally:
            await transport.close()

    return asyncio.run(go())


def _assert_majority_knows(d: Deployment, lone: int, upload: str, timeout_s: float = 10.0) -> None:
    """A replica of the majority side answers the upload as current within `timeout_s`, or
    the test fails with the last answers. One replica alone may be behind, or briefly stale
    itself on a loaded machine (its peers' STATUS delayed past its freshness bound), as the
    client's reads allow: they go on to the next replica."""
    deadline = time.monotonic() + timeout_s
    answers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        for replica in (r for r in range(4) if r != lone):
            answer = _query(d, replica, {"q": "upload", "upload": upload})
            if "result" in answer and codec.decode(answer["result"])["result"] is not None:
                return
            answers.append({k: v for k, v in answer.items() if k != "result"})
        time.sleep(0.5)
    raise AssertionError(f"no replica of the majority answered the upload: {answers[-3:]}")


def _minority_refuses_stale_reads(
    d: Deployment, cast: Cast, load: UploadLoad, lone: int, cut_at: float
) -> None:
    """Uploads made after the cut: the lone replica refuses to read them as stale, the majority
    and the vault (which reads past it) know them."""
    load.wait_for(3)
    upload = load.acked[-1][1]
    anchored = cast.clients["api-a"].wait_anchored(cast.dataset, upload, timeout_s=60)
    assert anchored["receipt"] is not None
    while time.monotonic() - cut_at < 5:
        time.sleep(0.2)  # past the replica's freshness bound (2 s)
    stale = _query(d, lone, {"q": "upload", "upload": upload})
    assert stale.get("error") == "stale" and "result" not in stale, stale
    _assert_majority_knows(d, lone, upload)
    # The vault's reads go past the cut-off replica (the consumer's access, the DPO's).
    assert cast.clients["api-b"].upload_status(cast.dataset, upload)["state"] == "anchored"


def test_minority_partition_refuses_stale_reads_then_fills_every_block(
    d: Deployment, cast: Cast, chains: Chains
) -> None:
    _, primary = _primary(d)
    lone = (primary + 2) % 4
    peers = [f"college-{i}" for i in range(4) if i != lone]
    with UploadLoad(cast.clients, cast.dataset, pause_s=0.0) as load:
        load.wait_for(2)
        # Its clients (the vault's site) still reach it.
        with _cut(d, [f"college-{lone}"], peers) as heal:
            cut_at = time.monotonic()
            _minority_refuses_stale_reads(d, cast, load, lone, cut_at)
            while time.monotonic() - cut_at < MINORITY_CUT_S:
                time.sleep(1)
            lone_status = d.status(lone)
            assert lone_status is not None and lone_status["stale_reads"] >= 1
            heal()
        load.wait_for(2)
    after = settle(d)
    assert after[lone]["height"] > lone_status["height"]
    assert after[lone]["missing_blocks"] == 0
    acknowledged_are_anchored(load, chains, d)  # every block, on all four, holes none
    print(
        f"replica {lone} cut {MINORITY_CUT_S:.0f} s at height {lone_status['height']}, "
        f"caught up to {after[lone]['height']} (backfilled {after[lone]['backfilled']})"
    )


def _outbox(d: Deployment, where: str) -> list[list[str]]:
    columns = "id, sent_at IS NOT NULL, tx_id, block_height"
    rows = d.pg_sql(f"SELECT {columns} FROM outbox WHERE {where} ORDER BY id", "civis")  # noqa: S608
    return [line.split("|") for line in rows.splitlines() if line]


@contextlib.contextmanager
def _only_api_a_relays(d: Deployment) -> Iterator[None]:
    """api-b paused (SIGSTOP) while api-a works, so api-a's relay is the one that ships (and
    dies); resumed after, to finish what api-a left."""
    d.apis["api-b"].signal(signal.SIGSTOP)
    try:
        yield
    finally:
        d.apis["api-b"].signal(signal.SIGCONT)


def _crashed(d: Deployment) -> None:
    proc = d.apis["api-a"].proc
    assert proc is not None
    assert proc.wait(30) == -signal.SIGKILL


def test_an_api_instance_killed_mid_upload_and_mid_erasure(
    d: Deployment, cast: Cast, chains: Chains
) -> None:
    """api-a dies by SIGKILL right after its relay submitted the fact's transaction and
    before it marked it sent (`CIVIS_CRASH_AT=after-submit`): the upload and the erasure are
    stored, their requests never answered. api-b's relay finishes each, exactly once."""
    records = some_records(3)
    d.restart_api("api-a", env={"CIVIS_CRASH_AT": "after-submit"})
    with _only_api_a_relays(d), pytest.raises(httpx.TransportError):
        cast.clients["api-a"].upload(cast.dataset, ndjson(records), wait=False)
    _crashed(d)
    stored = [u for u in cast.clients["api-b"].uploads(cast.dataset) if u["record_count"] == 3]
    assert len(stored) == 1, stored  # stored once: the killed request left no half upload
    upload = stored[0]["upload_id"]
    anchored = cast.clients["api-b"].wait_anchored(cast.dataset, upload)
    facts = _outbox(d, f"kind = 'upload.anchor' AND payload->>'upload' = '{upload}'")
    assert len(facts) == 1 and facts[0][1] == "t", facts
    assert anchored["receipt"] is not None and facts[0][2] == anchored["receipt"]["tx_id"]

    d.restart_api("api-a", env={"CIVIS_CRASH_AT": "after-submit"})
    with _only_api_a_relays(d), pytest.raises(httpx.TransportError):
        cast.dpo["api-a"].erase(subject_id=records[0][1], dataset_id=cast.dataset)
    _crashed(d)
    erasure_id = int(_outbox(d, "kind = 'erasure.record'")[-1][0])
    deadline = time.monotonic() + 60
    while (cert := cast.dpo["api-b"].erasure(erasure_id))["state"] != "recorded":
        assert time.monotonic() < deadline, cert
        time.sleep(0.5)
    assert cert["receipt"] is not None and cert["secrets_destroyed"] >= 1
    facts = _outbox(d, f"id = {erasure_id}")
    assert facts[0][1] == "t" and facts[0][2] == cert["receipt"]["tx_id"], facts
    d.restart_api("api-a")
    chains.verify(d)
    for receipt in (anchored["receipt"], cert["receipt"]):
        assert chains.holds(receipt["block_height"], receipt["tx_id"])


def test_postgres_restarted_under_load(
    d: Deployment, cast: Cast, chains: Chains, campaign: bool
) -> None:
    with UploadLoad(cast.clients, cast.dataset) as load:
        load.wait_for(4)
        d.stop_postgres(crash=True)
        down_at = time.monotonic()
        while time.monotonic() - down_at < (20 if campaign else 5):
            time.sleep(0.2)
        acked_while_down = len(load.acked)
        d.start_postgres()
        load.wait_for(4, timeout_s=90)  # recovered by itself: nobody restarted the APIs
    refused = dict(load.refusals)
    assert refused.get((503, "Database unavailable"), 0) >= 1, refused
    assert all(status != 500 for status, _ in refused), refused
    assert len(load.acked) > acked_while_down
    for name in d.apis:
        d.wait_api(name, timeout_s=30)
    acknowledged_are_anchored(load, chains, d)


def test_the_hosts_are_cleaned_up_after_a_harness_dies(tmp_path: Path) -> None:
    """A harness killed with SIGKILL leaves its namespaces; the next one deletes them (and
    the processes in them), and never those of a harness still alive."""
    reason = hosts.can_run()
    if reason is not None:
        pytest.skip(reason)
    script = (
        "import os, signal, subprocess\n"
        "from tests.netns.hosts import Network\n"
        "net = Network({'x': 's', 'y': 's'}).__enter__()\n"
        "net['x'].exec(['sleep', '600'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(net.prefix, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    import subprocess
    import sys

    env = {**_env(), "PYTHONPATH": str(hosts.CHECKOUT)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    prefix = out.stdout.strip()
    assert prefix.startswith(hosts.PREFIX), out.stderr
    left = [p.name for p in hosts.NETNS_DIR.iterdir() if p.name.startswith(prefix + "-")]
    assert len(left) == 3  # x, y and the wire
    with hosts.Network({"z": "s"}) as mine:
        gone = [p for p in left if (hosts.NETNS_DIR / p).exists()]
        assert gone == []
        assert (hosts.NETNS_DIR / mine["z"].netns).exists()
    assert not (hosts.NETNS_DIR / mine["z"].netns).exists()
