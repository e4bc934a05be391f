"""The genesis file and per-node configuration: what an operator writes to run a cluster.

Two kinds of file (documented with examples in docs/LEDGER-OPERATIONS.md):

- `genesis.toml`, identical on every host: chain id, f, and the validators (id, college,
  Ed25519 public key, peer address, client address, TLS certificate). It holds no secret.
- `node-<i>.toml`, one per replica, private to its host: its id, the path of the genesis file,
  its data directory, the path of its private key file (mode 0600, hex seed), its listen
  addresses, with TLS its certificate and key paths (used on the peer port and the client
  port), and its `[client_port]` table (the operator's read keys; `insecure` for a plain
  client port in local development).

Relative paths in either file are resolved against the directory of the file that names them,
so a generated directory can be moved or copied to another host as a whole.

This module never logs or prints a private key; `load_signing_key` refuses a key file readable
by group or others, as ssh does, because a leaked validator key lets anyone vote for it.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ledger_bridge import tls
from ledger_bridge.contracts.vocabulary import DEFAULT_COLLEGES
from ledger_bridge.crypto import SigningKey, VerifyKey

GENESIS_FILE = "genesis.toml"
READER_KEY_FILE = "keys/reader.key"  # `create_local`'s operator read key (see `readers`)
REPLICAS_MAX = 100  # a limit on everything: a cooperative has a handful of colleges


class GenesisError(ValueError):
    """A genesis or node file is missing a field, malformed, or unsafe (key file mode)."""


@dataclass(frozen=True)
class Validator:
    id: int
    college: str
    public_key: VerifyKey
    address: str  # host:port replicas dial
    client_address: str  # host:port clients dial
    tls_cert: Path | None = None


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    f: int
    validators: tuple[Validator, ...]
    tls_ca: Path | None = None
    # Protocol parameters handed to the replica (batch size, timeouts...), kept as written so
    # this file does not have to change when the core adds one.
    params: dict[str, Any] = field(default_factory=dict)
    # The application's founding state (for the consent contracts: colleges, founding members,
    # approved purposes), kept as written and handed to the application by the node.
    app_genesis: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.validators)

    def public_keys(self) -> list[VerifyKey]:
        return [v.public_key for v in self.validators]


@dataclass(frozen=True)
class NodeConfig:
    id: int
    genesis_file: Path
    data_dir: Path
    private_key_file: Path
    listen: str
    client_listen: str
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # `[client_port]`: `insecure = true` serves clients plain TCP (local development only;
    # without it the client port needs the TLS files), and `readers`, hex Ed25519 keys that
    # read everything on this replica, as validators do (an operator's key).
    insecure_client_port: bool = False
    readers: tuple[VerifyKey, ...] = ()

    def genesis(self) -> Genesis:
        return load_genesis(self.genesis_file)

    def signing_key(self) -> SigningKey:
        return load_signing_key(self.private_key_file)

    def tls_files(self, genesis: Genesis) -> tls.TlsFiles | None:
        if genesis.tls_ca is None or self.tls_cert is None or self.tls_key is None:
            return None
        return tls.TlsFiles(genesis.tls_ca, self.tls_cert, self.tls_key)


def _req(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GenesisError(f"{where}: `{key}` must be a {kind.__name__}")
    return value


def _path(base: Path, value: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise GenesisError(f"path {value!r} must be a string")
    p = Path(value)
    return p if p.is_absolute() else base / p


def load_genesis(path: Path) -> Genesis:
    """Parse and check a genesis file: ids 0..n-1 in order, n = 3f+1, distinct keys."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GenesisError(f"cannot read {path}: {exc}") from None
    base = path.parent
    chain_id = _req(doc, "chain_id", str, "genesis")
    f = _req(doc, "f", int, "genesis")
    rows = doc.get("validators")
    if not isinstance(rows, list) or not rows or len(rows) > REPLICAS_MAX:
        raise GenesisError(f"genesis: `validators` must list 1..{REPLICAS_MAX} tables")
    validators = []
    for i, row in enumerate(rows):
        where = f"validator #{i}"
        if not isinstance(row, dict):
            raise GenesisError(f"{where} is not a table")
        if _req(row, "id", int, where) != i:
            raise GenesisError(f"{where}: ids must be 0..n-1 in order")
        try:
            key = VerifyKey(bytes.fromhex(_req(row, "public_key", str, where)))
        except ValueError:
            raise GenesisError(f"{where}: `public_key` is not 32 hex bytes") from None
        validators.append(
            Validator(
                id=i,
                college=_req(row, "college", str, where),
                public_key=key,
                address=_req(row, "address", str, where),
                client_address=_req(row, "client_address", str, where),
                tls_cert=_path(base, row.get("tls_cert")),
            )
        )
    if len(validators) != 3 * f + 1 or f < 1:
        raise GenesisError(f"genesis: {len(validators)} validators for f={f}; need 3f+1, f>=1")
    if len({v.public_key for v in validators}) != len(validators):
        raise GenesisError("genesis: two validators share a public key")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise GenesisError("genesis: `params` must be a table")
    app_genesis = doc.get("app_genesis", {})
    if not isinstance(app_genesis, dict):
        raise GenesisError("genesis: `app_genesis` must be a table")
    tls_table = doc.get("tls", {})
    return Genesis(
        chain_id=chain_id,
        f=f,
        validators=tuple(validators),
        tls_ca=_path(base, tls_table.get("ca_cert")) if isinstance(tls_table, dict) else None,
        params=dict(params),
        app_genesis=dict(app_genesis),
    )


def load_node_config(path: Path) -> NodeConfig:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GenesisError(f"cannot read {path}: {exc}") from None
    base = path.parent
    where = str(path)
    tls_table = doc.get("tls", {})
    if not isinstance(tls_table, dict):
        raise GenesisError(f"{where}: `tls` must be a table")
    genesis_file = _path(base, _req(doc, "genesis", str, where))
    data_dir = _path(base, _req(doc, "data_dir", str, where))
    key_file = _path(base, _req(doc, "private_key_file", str, where))
    assert genesis_file and data_dir and key_file
    insecure, readers = _client_port(doc, where)
    return NodeConfig(
        id=_req(doc, "id", int, where),
        genesis_file=genesis_file,
        data_dir=data_dir,
        private_key_file=key_file,
        listen=_req(doc, "listen", str, where),
        client_listen=_req(doc, "client_listen", str, where),
        tls_cert=_path(base, tls_table.get("cert")),
        tls_key=_path(base, tls_table.get("key")),
        insecure_client_port=insecure,
        readers=readers,
    )


def _client_port(doc: dict[str, Any], where: str) -> tuple[bool, tuple[VerifyKey, ...]]:
    """The `[client_port]` table: (insecure, readers)."""
    table = doc.get("client_port", {})
    if not isinstance(table, dict):
        raise GenesisError(f"{where}: `client_port` must be a table")
    insecure = table.get("insecure", False)
    if not isinstance(insecure, bool):
        raise GenesisError(f"{where}: `client_port.insecure` must be true or false")
    rows = table.get("readers", [])
    if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
        raise GenesisError(f"{where}: `client_port.readers` must list hex public keys")
    try:
        readers = tuple(VerifyKey(bytes.fromhex(r)) for r in rows)
    except ValueError:
        raise GenesisError(f"{where}: a `client_port.readers` key is not 32 hex bytes") from None
    return insecure, readers


def write_private_file(path: Path, data: bytes) -> None:
    """Create a file with mode 0600 from its first byte (in a 0700 directory if it is new)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_private(root: Path) -> None:
    """`root` and everything under it: directories 0700, files 0600 (symlinks left alone).

    Why for the whole tree: a cluster directory holds nothing other local users need. The
    genesis and the certificates are public in the sense that the operators exchange them,
    but the copies here sit next to keys, logs and databases, and are read only by us.
    """
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() else 0o600)


def load_signing_key(path: Path) -> SigningKey:
    """Read a hex seed key file; refuse it when group or others may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise GenesisError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise GenesisError(f"key file {path} is accessible by group/others; chmod 600 it")
    try:
        return SigningKey(bytes.fromhex(text))
    except ValueError:
        raise GenesisError(f"key file {path} does not hold a 32-byte hex seed") from None


def create_local(
    directory: Path,
    replicas: int = 4,
    base_port: int = 26600,
    host: str = "127.0.0.1",
    chain_id: str = "civis-local",
    use_tls: bool = True,
    params: dict[str, Any] | None = None,
    app_genesis: dict[str, Any] | None = None,
    client_tls: bool | None = None,
    hosts: list[str] | None = None,
) -> list[Path]:
    """Generate a genesis, keys, certificates and node files for a cluster on one host, or,
    with `hosts` (one address per replica, in id order), for replicas on several hosts.

    Replica i listens for peers on base_port + i and for clients on base_port + 100 + i, on
    `host` or on `hosts[i]` (the same numbers on every host, so several replicas may share
    one).
    The client port speaks TLS when `client_tls` (by default, when `use_tls`); otherwise the
    node files say `client_port.insecure = true` (a benchmark's plain baseline, development).
    Returns the node config paths. Refuses to overwrite an existing genesis: regenerating
    keys under running replicas would fork the chain.
    """
    if (replicas - 1) % 3 != 0 or replicas < 4 or replicas > REPLICAS_MAX:
        raise GenesisError("replicas must be 3f+1 with f >= 1 (4, 7, 10, ...)")
    if hosts is not None and len(hosts) != replicas:
        raise GenesisError(f"{len(hosts)} hosts for {replicas} replicas: name one per replica")
    client_tls = use_tls if client_tls is None else client_tls
    if client_tls and not use_tls:
        raise GenesisError("a TLS client port needs the cluster's certificates (use_tls)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # nobody else may even list it while its files are being made
    genesis_path = directory / GENESIS_FILE
    if genesis_path.exists():
        raise GenesisError(f"{genesis_path} exists; refusing to overwrite a cluster's keys")
    tls_dir = directory / "tls"
    ca = tls.create_ca(tls_dir) if use_tls else None
    client_port = _client_port_table(directory, client_tls)
    rows: list[dict[str, Any]] = []
    node_paths = []
    for i in range(replicas):
        where = host if hosts is None else hosts[i]
        row, node_path = _write_node(directory, i, where, base_port, client_port, ca)
        rows.append(row)
        node_paths.append(node_path)
    doc: dict[str, Any] = {
        "chain_id": chain_id,
        "f": (replicas - 1) // 3,
        "params": params or {},
        "validators": rows,
    }
    if app_genesis:
        doc["app_genesis"] = app_genesis
    if use_tls:
        doc["tls"] = {"ca_cert": "tls/ca.crt"}
        make_private(tls_dir)  # the certificates were written with the default modes
    write_private_file(genesis_path, tomli_w.dumps(doc).encode())
    return node_paths


def _write_node(
    directory: Path,
    i: int,
    host: str,
    base_port: int,
    client_port: dict[str, Any],
    ca: tuple[Path, Path] | None,
) -> tuple[dict[str, Any], Path]:
    """Replica i's key, certificate (with the CA's (cert, key), when TLS) and node file;
    returns its row of the genesis' validators and the node file's path."""
    key = SigningKey.generate()
    key_file = directory / "keys" / f"node-{i}.key"
    write_private_file(key_file, key.seed().hex().encode() + b"\n")
    row: dict[str, Any] = {
        "id": i,
        "college": DEFAULT_COLLEGES[i % len(DEFAULT_COLLEGES)],
        "public_key": key.public_key.hex(),
        "address": f"{host}:{base_port + i}",
        "client_address": f"{host}:{base_port + 100 + i}",
    }
    node: dict[str, Any] = {
        "id": i,
        "genesis": GENESIS_FILE,
        "data_dir": f"data/node-{i}",
        "private_key_file": f"keys/node-{i}.key",
        "listen": row["address"],
        "client_listen": row["client_address"],
        "client_port": client_port,
    }
    if ca is not None:
        files = tls.issue_node_certificate(directory / "tls", ca[0], ca[1], i, [host])
        row["tls_cert"] = str(files.cert.relative_to(directory))
        node["tls"] = {
            "cert": str(files.cert.relative_to(directory)),
            "key": str(files.key.relative_to(directory)),
        }
    node_path = directory / f"node-{i}.toml"
    write_private_file(node_path, tomli_w.dumps(node).encode())
    return row, node_path


def _client_port_table(directory: Path, client_tls: bool) -> dict[str, Any]:
    """The node files' `[client_port]`, and the operator's read key it lists: validators read
    everything, and so does this key, for the launcher's and the operator's reads of blocks
    and state."""
    reader = SigningKey.generate()
    write_private_file(directory / READER_KEY_FILE, reader.seed().hex().encode() + b"\n")
    client_port: dict[str, Any] = {"readers": [reader.public_key.hex()]}
    if not client_tls:
        client_port["insecure"] = True  # asked for a plain client port: development only
    return client_port
