"""The audit trail: security-relevant events as a hash-chained, checkpoint-signed record list.

``hash = SHA-256(prev_hash || canonical JSON [seq, ts, kind, actor, subject, data])``; the chain head is
signed before each group commit by the same ``Checkpointer`` as the block log, and every record goes to
the ``audit`` outbox stream in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.store.blocklog import ZERO_HASH, ChainHead, Checkpointer, VerifyReport, _ChainWalk, _load_checkpoints
from daemon.store.errors import InvalidInputError
from daemon.store.outbox import enqueue

if TYPE_CHECKING:
    from daemon.store.db import Database

# The kinds the issue names; other subsystems may add their own (lower-case, dotted or underscored).
REGISTRATION = "registration"
AUTH_FAILURE = "auth_failure"
PERMISSION_DENIED = "permission_denied"
CROSS_AGENT_READ = "cross_agent_read"
TRUST_CHANGE = "trust_change"
POLICY_DECISION = "policy_decision"
DEVICE_COMMAND = "device_command"
KNOWN_KINDS = (
    REGISTRATION, AUTH_FAILURE, PERMISSION_DENIED, CROSS_AGENT_READ, TRUST_CHANGE, POLICY_DECISION, DEVICE_COMMAND,
)
_KIND_RE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: float
    kind: str
    actor: str
    subject: str
    data: Mapping[str, Any]
    prev_hash: bytes
    hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts": self.ts, "kind": self.kind, "actor": self.actor, "subject": self.subject,
            "data": dict(self.data), "prev_hash": self.prev_hash.hex(), "hash": self.hash.hex(),
        }


def record_hash(prev: bytes, seq: int, ts: float, kind: str, actor: str, subject: str, data_json: str) -> bytes:  # noqa: PLR0917 - mirrors the fields of a fixed record layout
    body = json.dumps([seq, ts, kind, actor, subject, json.loads(data_json)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(prev + body.encode()).digest()


# Text as bytes, see ``audit_verify``.
_VERIFY_SQL = (
    "SELECT seq, ts,"  # noqa: S608 - fixed column names only
    + ",".join(f" CASE WHEN typeof({c}) = 'text' THEN CAST({c} AS BLOB) END"
               for c in ("kind", "actor", "subject", "data"))
    + ", prev_hash, hash FROM audit ORDER BY seq"
)


def _load_head(conn: sqlite3.Connection) -> ChainHead:
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return ChainHead(0, ZERO_HASH) if row is None else ChainHead(int(row[0]), bytes(row[1]))


def _row_to_record(row: Any) -> AuditRecord:
    return AuditRecord(
        int(row[0]), float(row[1]), str(row[2]), str(row[3]), str(row[4]), json.loads(row[5]),
        bytes(row[6]), bytes(row[7]),
    )


class AuditLog:
    def __init__(self, db: Database, checkpointer: Checkpointer, clock: Callable[[], float]) -> None:
        self._db = db
        self._ckpt = checkpointer
        self._clock = clock

    def setup(self, conn: sqlite3.Connection) -> None:
        self._ckpt.register("audit", _load_head, conn)

    async def audit_append(
        self, kind: str, actor: str, subject: str, data: Mapping[str, Any] | None = None
    ) -> AuditRecord:
        """Record one event; durable (with its signature checkpoint and outbox record) on return."""
        if not _KIND_RE.match(kind):
            raise InvalidInputError(f"audit kind {kind!r} must be lower-case letters, digits, '_' or '.'")
        try:
            data_json = json.dumps(dict(data or {}), sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"audit data is not JSON-serialisable: {exc}") from exc
        ts = self._clock()

        def run(conn: sqlite3.Connection) -> AuditRecord:
            head = self._ckpt.heads["audit"]
            seq = head.seq + 1
            digest = record_hash(head.hash, seq, ts, kind, actor, subject, data_json)
            conn.execute(
                "INSERT INTO audit(seq, ts, kind, actor, subject, data, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, ts, kind, actor, subject, data_json, head.hash, digest),
            )
            record = AuditRecord(seq, ts, kind, actor, subject, json.loads(data_json), head.hash, digest)
            enqueue(conn, "audit", f"audit-{seq}", json.dumps(record.to_json(), sort_keys=True).encode(), ts)
            head.seq, head.hash, head.dirty = seq, digest, True
            return record

        return await self._db.write(run)

    async def audit_list(
        self,
        *,
        kind: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        since: float | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Records in chain order after ``after_seq``, filtered; ``limit`` is capped at 1000."""
        clauses = ["seq > ?"]
        args: list[Any] = [after_seq]
        for column, value in (("kind", kind), ("actor", actor), ("subject", subject)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            clauses.append("ts >= ?")
            args.append(since)
        args.append(max(0, min(limit, 1000)))

        def run(conn: sqlite3.Connection) -> list[AuditRecord]:
            rows = conn.execute(
                "SELECT seq, ts, kind, actor, subject, data, prev_hash, hash FROM audit"  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                f" WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?",
                args,
            ).fetchall()
            return [_row_to_record(r) for r in rows]

        return await self._db.read(run)

    async def audit_verify(self) -> VerifyReport:
        """Recompute the whole chain and check its checkpoints; names the first bad record's seq."""
        checkpoints, signers = await self._db.read(_load_checkpoints("audit"))

        def run(conn: sqlite3.Connection) -> VerifyReport:
            walk = _ChainWalk(checkpoints, signers, chain="audit")
            prev = ZERO_HASH
            expected = 1
            # Text comes as bytes and is decoded here: a value that is not UTF-8 then fails its record
            # instead of making the fetch raise, and a value of another storage class comes as NULL.
            for seq, ts, kind, actor, subject, data, prev_hash, digest in conn.execute(
                _VERIFY_SQL
            ):
                bad: str | None = None
                try:
                    computed = record_hash(
                        prev, seq, ts, kind.decode(), actor.decode(), subject.decode(), data.decode()
                    )
                except (TypeError, ValueError, AttributeError):
                    computed = b""
                if seq != expected:
                    bad = f"expected seq {expected}, found {seq}"
                elif prev_hash != prev:
                    bad = "previous hash does not match the previous record"
                elif computed != digest:
                    bad = "record hash does not match its contents"
                else:
                    bad = walk.check_checkpoints(seq, digest)
                if bad is not None:
                    return VerifyReport(False, expected - 1, expected, None, bad)
                prev = digest
                expected += 1
            walk.seq = expected - 1
            walk.checked = expected - 1
            return walk.finish()

        return await self._db.read(run)
