"""A vault database records its facts on one chain; the API refuses to start on another.

Why it matters: a recreated ledger directory (new validator keys) or a database pointed at the
wrong cluster would otherwise be found out only by a relay stuck on a fact the new chain's
contracts refuse, while receipts in the database name blocks the new chain never had.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from types import TracebackType

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api.http.app import create_app
from api.http.settings import Settings
from api.services.gateway import LedgerGateway, WrongChain, bind_database
from ledger_bridge.genesis import GENESIS_FILE, create_local, load_genesis
from tests.conftest import free_port
from vault import db
from vault.models import LedgerBinding


def _genesis(directory: Path, chain_id: str = "civis-local") -> object:
    create_local(directory, 4, base_port=1, chain_id=chain_id, use_tls=False)
    return load_genesis(directory / GENESIS_FILE)


def test_first_start_binds_and_another_chain_is_refused(
    fresh_database_url: str, tmp_path: Path
) -> None:
    db.upgrade(fresh_database_url)
    engine = db.make_engine(fresh_database_url, pool_size=1)
    ours = _genesis(tmp_path / "a")
    same_id_other_keys = _genesis(tmp_path / "b")  # same chain id, new validator keys
    other_id = _genesis(tmp_path / "c", chain_id="civis-elsewhere")
    try:
        for _ in range(2):  # binding is idempotent for the same chain
            with Session(engine) as session, session.begin():
                bind_database(session, ours)  # type: ignore[arg-type]
        for wrong in (same_id_other_keys, other_id):
            with Session(engine) as session, session.begin(), pytest.raises(WrongChain):
                bind_database(session, wrong)  # type: ignore[arg-type]
        with Session(engine) as session:
            assert session.get(LedgerBinding, 1).chain_id == "civis-local"  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_the_api_does_not_start_on_a_database_of_another_chain(
    fresh_database_url: str, tmp_path: Path
) -> None:
    db.upgrade(fresh_database_url)
    settings = Settings(environment="test", data_dir=tmp_path / "data")
    gateways = []
    for name in ("first", "second"):
        create_local(tmp_path / name, 4, base_port=2, use_tls=False)
        gateways.append(LedgerGateway.from_directory(tmp_path / name, tmp_path / "keys"))
    try:
        app = create_app(settings, database_url=fresh_database_url, ledger=gateways[0])
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
        app = create_app(settings, database_url=fresh_database_url, ledger=gateways[1])
        with pytest.raises(WrongChain), TestClient(app):
            pass
    finally:
        for g in gateways:
            g.close()


class LateDatabase:
    """A loopback port where nothing listens until `open()`, as a restarting PostgreSQL looks
    to a client (connection refused); then every connection is relayed to `target`: a TCP
    address, or the path of a Unix socket (the embedded server listens on one)."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self.relayed = 0

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if isinstance(self.target, str):
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(self.target)
            else:
                upstream = socket.create_connection(self.target)
            self.relayed += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def __enter__(self) -> LateDatabase:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for end in (src, dst):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def _server_address(url: str) -> tuple[str, int] | str:
    """Where the database of `url` listens: its TCP address, or its Unix socket's path when
    the URL names a socket directory (`?host=/dir`)."""
    parsed = make_url(url)
    port = parsed.port or 5432
    directory = parsed.query.get("host")
    if isinstance(directory, str) and directory.startswith("/"):
        return f"{directory}/.s.PGSQL.{port}"
    return (parsed.host or "127.0.0.1", port)


def test_a_starting_api_waits_for_its_database_then_binds_it(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """A worker started while PostgreSQL restarts (api/cli/serving.py) waits for it and
    starts; without the wait, the same start fails, which would stop every worker."""
    db.upgrade(fresh_database_url)
    real = make_url(fresh_database_url)
    create_local(tmp_path / "ledger", 4, base_port=3, use_tls=False)
    gateway = LedgerGateway.from_directory(tmp_path / "ledger", tmp_path / "keys")
    try:
        with LateDatabase(_server_address(fresh_database_url)) as late:
            url = real.set(host="127.0.0.1", port=late.port, query={"connect_timeout": "2"})
            url_text = url.render_as_string(hide_password=False)
            impatient = Settings(
                environment="test", data_dir=tmp_path / "a", database_start_wait_s=0
            )
            app = create_app(impatient, database_url=url_text, ledger=gateway)
            with pytest.raises(OperationalError), TestClient(app):
                pass
            patient = Settings(
                environment="test", data_dir=tmp_path / "b", database_start_wait_s=60
            )
            app = create_app(patient, database_url=url_text, ledger=gateway)
            threading.Timer(1.0, late.open).start()
            with TestClient(app) as client:
                assert late.relayed >= 1  # it started on the database once that answered
                assert client.get("/healthz").status_code == 200
        engine = db.make_engine(fresh_database_url, pool_size=1)
        with Session(engine) as session:
            bound = session.get(LedgerBinding, 1)
            assert bound is not None and bound.chain_id == gateway.chain_id
        engine.dispose()
    finally:
        gateway.close()
