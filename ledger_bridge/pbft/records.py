"""The replica's durable record format: the one place that writes and reads it.

The shell stores these records verbatim as (kind, key, value) rows (`ledger_bridge.storage`
keeps them as opaque blobs) and hands them back after a restart, so the bytes written here
are what every existing store and write-ahead log holds: a change to any layout below needs
a reader for the old bytes too. Kinds and keys:

- "meta", key b"view": `ViewRecord`, msgpack [view, active, suspecting] (a store may hold the
  two-field [view, active], read as not suspecting);
- "meta", key b"stable": `CheckpointRecord`, msgpack [seq, digest, [CHECKPOINT...]], the
  stable checkpoint's proof;
- "meta", key b"snapshot": `CheckpointRecord` with its state, msgpack [seq, digest,
  [CHECKPOINT...], snapshot] (`FrozenState.packed()`), written every `durable_snapshot_txs`;
- "meta", key b"redactions": msgpack int, how many of the application's redaction entries
  the stored blocks have had applied;
- "log", key `seq_key(n)`: `LogRecord`, msgpack [pre-prepare, prepared certificate,
  [COMMIT...], committed pre-prepare] for sequence number n (each an encoded message or b""):
  what the replica must not forget, from the durable snapshot up, so a restart can
  re-execute from it to the stable checkpoint.

Why the messages inside stay encoded until asked for (`LogRecord`): a restart reads every
log record from the durable snapshot up but needs the votes only of those above the stable
checkpoint; decoding is the bulk of a restart's work.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.messages import Checkpoint, Commit, PreparedCert, PrePrepare

KIND_META = "meta"
KIND_LOG = "log"
META_VIEW = b"view"
META_STABLE = b"stable"
META_SNAPSHOT = b"snapshot"
META_REDACTIONS = b"redactions"


def seq_key(seq: int) -> bytes:
    """Big-endian, so byte order is numeric order (the shell GCs with `key < seq_key(h+1)`)."""
    assert 0 <= seq < 1 << 64
    return seq.to_bytes(8, "big")


def key_seq(key: bytes) -> int:
    return int.from_bytes(key[:8], "big")


# One packer for the records, as packb builds one per call. What it packs is lists of bytes
# and ints, packed wholly in C under the GIL, so even a second thread could not interleave.
_PACKER = msgpack.Packer(use_bin_type=True)


def _pack(obj: Any) -> bytes:
    out: bytes = _PACKER.pack(obj)
    return out


@dataclass(frozen=True)
class ViewRecord:
    """The view, whether the replica is active in it, and whether it announced a suspicion
    of its primary (sticky: announced before a crash, it stays announced)."""

    view: int
    active: bool
    suspecting: bool

    def encode(self) -> bytes:
        return _pack([self.view, self.active, self.suspecting])

    @classmethod
    def decode(cls, raw: bytes) -> ViewRecord:
        view, active, *rest = msgpack.unpackb(raw, raw=False)
        return cls(int(view), bool(active), bool(rest[0]) if rest else False)


@dataclass(frozen=True)
class CheckpointRecord:
    """A stable checkpoint with its 2f+1 proof; `snapshot` (the durable snapshot's packed
    state) only under META_SNAPSHOT."""

    seq: int
    digest: bytes
    proof: tuple[Checkpoint, ...]
    snapshot: bytes | None = None

    def encode(self) -> bytes:
        fields: list[Any] = [self.seq, self.digest, [m.encode(c) for c in self.proof]]
        if self.snapshot is not None:
            fields.append(self.snapshot)
        return _pack(fields)

    @classmethod
    def decode(cls, raw: bytes) -> CheckpointRecord:
        seq, state_digest, proof, *rest = msgpack.unpackb(raw, raw=False)
        checkpoints: list[Checkpoint] = []
        for p in proof:
            cp = m.decode(p)
            assert isinstance(cp, Checkpoint)
            checkpoints.append(cp)
        snapshot = bytes(rest[0]) if rest else None
        return cls(int(seq), bytes(state_digest), tuple(checkpoints), snapshot)


def encode_count(n: int) -> bytes:
    """META_REDACTIONS: a bare msgpack int."""
    return _pack(n)


def decode_count(raw: bytes) -> int:
    return int(msgpack.unpackb(raw))


@dataclass(frozen=True)
class LogRecord:
    """One sequence number's durable log entry, its messages kept encoded (b"" for none)
    and decoded on demand (see the module docstring)."""

    pre_prepare: bytes = b""
    cert: bytes = b""
    commits: tuple[bytes, ...] = ()
    committed: bytes = b""

    @classmethod
    def of(
        cls,
        pre_prepare: PrePrepare | None,
        cert: PreparedCert | None,
        committed: tuple[PrePrepare, tuple[Commit, ...]] | None,
    ) -> LogRecord:
        return cls(
            m.encode(pre_prepare) if pre_prepare is not None else b"",
            m.encode(cert) if cert is not None else b"",
            tuple(m.encode(c) for c in committed[1]) if committed is not None else (),
            m.encode(committed[0]) if committed is not None else b"",
        )

    def encode(self) -> bytes:
        return _pack([self.pre_prepare, self.cert, list(self.commits), self.committed])

    @classmethod
    def decode(cls, raw: bytes) -> LogRecord:
        pp, cert, commits, committed = msgpack.unpackb(raw, raw=False)
        return cls(pp, cert, tuple(commits), committed)

    def accepted(self) -> PrePrepare | None:
        """The PRE-PREPARE the replica accepted at this sequence number."""
        if not self.pre_prepare:
            return None
        pp = m.decode(self.pre_prepare)
        assert isinstance(pp, PrePrepare)
        return pp

    def prepared(self) -> PreparedCert | None:
        if not self.cert:
            return None
        cert = m.decode(self.cert)
        assert isinstance(cert, PreparedCert)
        return cert

    def committed_batch(self) -> tuple[PrePrepare, tuple[Commit, ...]] | None:
        """The committed batch with its commit certificate."""
        if not self.committed:
            return None
        pp = m.decode(self.committed)
        assert isinstance(pp, PrePrepare)
        commits: list[Commit] = []
        for raw in self.commits:
            commit = m.decode(raw)
            assert isinstance(commit, Commit)
            commits.append(commit)
        return pp, tuple(commits)


@dataclass(frozen=True)
class Loaded:
    """The replica's records as read back after a restart (None: never written)."""

    view: ViewRecord | None
    stable: CheckpointRecord | None
    snapshot: CheckpointRecord | None
    redactions_applied: int | None
    log: Sequence[tuple[bytes, bytes]]

    @classmethod
    def read(cls, records: Mapping[str, Sequence[tuple[bytes, bytes]]]) -> Loaded:
        meta = dict(records.get(KIND_META, []))
        view, stable, snapshot, count = (
            meta.get(k) for k in (META_VIEW, META_STABLE, META_SNAPSHOT, META_REDACTIONS)
        )
        return cls(
            ViewRecord.decode(view) if view is not None else None,
            CheckpointRecord.decode(stable) if stable is not None else None,
            CheckpointRecord.decode(snapshot) if snapshot is not None else None,
            decode_count(count) if count is not None else None,
            records.get(KIND_LOG, []),
        )

    def log_records(self, above: int) -> Iterator[tuple[int, LogRecord]]:
        """(seq, record) for the log records above `above`, in sequence order."""
        for key, value in self.log:
            seq = key_seq(key)
            if seq > above:
                yield seq, LogRecord.decode(value)
