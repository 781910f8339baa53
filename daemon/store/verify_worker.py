"""The block-log chain walk, and the worker process that runs it over one range of the log.

A worker is started as ``python -I -S <this file>`` by ``BlockLog.verify``. It imports a few
standard modules only and is started by path, not as ``daemon.store.verify_worker``, so it neither
imports the store package (cryptography, sqlite-vec) nor costs more than ~16 ms to start. The
parent walks the first range itself in a thread (``walk_range``) while one worker per other range
starts, so two cores verify a log in a little over half the time one thread takes, which one
thread cannot (fetching a row into Python costs more than hashing it).

A worker recomputes every chain hash of its range and checks that each checkpoint of the range names
the chain hash it computed at that seq. It holds no key and checks no signature: the parent, which has
the signers' public keys, checks the checkpoints' signatures over those same stored heads.

The walk itself (``walk_rows``) is also what the single-thread verification in ``blocklog`` runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import struct
import sys

# Not ``typing.TYPE_CHECKING``: importing typing and dataclasses would add a third to a worker's
# ~16 ms start, which is paid once per range before any block is checked.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping
    from typing import Any

ZERO_HASH = b"\x00" * 32
# A worker reports progress after this many blocks (a few times a second).
PROGRESS_EVERY = 20_000
# The fixed part of every block that its chain hash covers (see daemon/store/blocklog.py).
HEADER = struct.Struct(">Q16s4sIQII")
# The columns the walk reads, in its order. The id and the FourCC come as NULL when their length is
# wrong: ``struct`` would silently cut or pad them to fit the header, so a lengthened field would still
# hash as before. The FourCC comes as bytes so no row needs an encode. Every other value is taken as
# stored: one of another storage class (TEXT where a BLOB belongs, a REAL flag) makes the hashing
# raise a TypeError, which fails its block; the connection must decode TEXT with ``lenient_text``.
WALK_COLUMNS = (
    "seq, CASE WHEN length(block_id) = 16 THEN block_id END,"
    " CASE WHEN typeof(fourcc) = 'text' AND length(CAST(fourcc AS BLOB)) = 4 THEN CAST(fourcc AS BLOB) END,"
    " flags, ts_us, metadata, payload, prev_hash, chain_hash"
)


def lenient_text(raw: bytes) -> str:
    """``text_factory`` for a walk: TEXT that is not UTF-8 still comes as ``str`` (and so fails its
    block) instead of making the fetch raise. Blocks hold no TEXT but the FourCC, fetched as bytes,
    so this runs only for damaged rows."""
    return raw.decode("utf-8", "surrogateescape")


class WalkState:
    """Where a walk stands: the last chain hash, the seq it expects next and how many blocks passed."""

    __slots__ = ("checked", "expected_seq", "prev")

    def __init__(self, prev: bytes = ZERO_HASH, expected_seq: int = 1, checked: int = 0) -> None:
        self.prev, self.expected_seq, self.checked = prev, expected_seq, checked


class WalkFailure:
    """The first block that does not belong where it is, and why."""

    __slots__ = ("block_id", "reason", "seq")

    def __init__(self, seq: int, block_id: str | None, reason: str) -> None:
        self.seq, self.block_id, self.reason = seq, block_id, reason

    def __repr__(self) -> str:
        return f"WalkFailure(seq={self.seq!r}, block_id={self.block_id!r}, reason={self.reason!r})"


def walk_rows(rows: Iterable[Any], state: WalkState, heads: Mapping[int, Collection[bytes]]) -> WalkFailure | None:
    """Check ``WALK_COLUMNS`` rows in seq order against the chain; the first failure, or None.

    ``heads`` maps a seq to the chain heads its checkpoints name; each must be the hash computed there.

    The loop body is what verification costs per block beyond fetching and hashing it, so the common
    case (hash, link and seq all match) is one comparison chain and no attribute writes.
    """
    sha256 = hashlib.sha256
    pack = HEADER.pack
    prev = state.prev
    expected = state.expected_seq
    failure: WalkFailure | None = None
    for row in rows:
        seq, block_id, fourcc, flags, ts_us, meta, payload, prev_hash, chained = row
        try:
            # Fed in three parts: cheaper than concatenating a kilobyte-sized message per block.
            hasher = sha256(prev + pack(seq, block_id, fourcc, flags, ts_us, len(payload), len(meta)))
            hasher.update(payload)
            hasher.update(meta)
            computed = hasher.digest()
        except (struct.error, TypeError):
            computed = b""
        if computed == chained and prev_hash == prev and seq == expected:
            if seq in heads and any(head != chained for head in heads[seq]):
                failure = WalkFailure(seq, block_id.hex(), f"checkpoint at seq {seq} does not match the chain head")
                break
            prev = chained
            expected += 1
            continue
        failure = _failure(row, expected, prev, computed)
        break
    state.checked += expected - state.expected_seq
    state.prev, state.expected_seq = prev, expected
    return failure


def _failure(row: Any, expected: int, prev: bytes, computed: bytes) -> WalkFailure:
    """The chain breaks at ``expected``: the block there is missing, out of place, unlinked or altered."""
    seq, block_id, _, _, _, _, _, prev_hash, chained = row
    if seq != expected:
        return WalkFailure(expected, None, f"expected seq {expected}, found {seq} (block missing or reordered)")
    if prev_hash != prev:
        reason = "previous hash does not match the previous block"
    elif computed != chained:
        reason = "chain hash does not match the block's contents"
    else:  # pragma: no cover - walk_rows calls this only when one of the three differs
        reason = "block does not match"
    return WalkFailure(expected, bytes(block_id).hex() if isinstance(block_id, bytes) else None, reason)


def load_heads(conn: sqlite3.Connection, chain: str, lo: int, hi: int) -> dict[int, list[bytes]]:
    """The chain heads that the checkpoints of seqs ``lo..hi`` name."""
    heads: dict[int, list[bytes]] = {}
    for seq, head in conn.execute(
        "SELECT upto_seq, head_hash FROM checkpoints WHERE chain = ? AND upto_seq BETWEEN ? AND ?", (chain, lo, hi)
    ):
        heads.setdefault(int(seq), []).append(bytes(head) if isinstance(head, bytes) else b"")
    return heads


def walk_range(
    path: str, lo: int, hi: int, progress: Callable[[int], None] | None = None, *, every: int = PROGRESS_EVERY,
) -> dict[str, Any]:
    """Walk seqs ``lo..hi`` of the database at ``path`` read-only; the result as JSON-ready values.

    The range's first block is hashed on its own stored ``prev_hash``; the parent checks that this
    equals the previous range's last chain hash, which joins the ranges into one chain. ``progress``
    hears the number of blocks checked so far every ``every`` blocks.
    """
    # In a URI filename "?", "#" and "%" end or escape the path (https://www.sqlite.org/uri.html).
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    conn = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True)
    conn.text_factory = lenient_text
    try:
        first = conn.execute("SELECT prev_hash FROM blocks WHERE seq = ?", (lo,)).fetchone()
        first_prev = bytes(first[0]) if first is not None and isinstance(first[0], bytes) else None
        state = WalkState(prev=ZERO_HASH if lo == 1 or first_prev is None else first_prev, expected_seq=lo)
        heads = load_heads(conn, "maif", lo, hi)
        rows = conn.execute(f"SELECT {WALK_COLUMNS} FROM blocks WHERE seq BETWEEN ? AND ? ORDER BY seq", (lo, hi))  # noqa: S608 - a fixed column list
        while True:
            before = state.expected_seq
            failure = walk_rows(itertools.islice(rows, every), state, heads)
            if failure is not None or state.expected_seq == before:
                break
            if progress is not None:
                progress(state.checked)
        if failure is None and state.expected_seq != hi + 1:
            failure = WalkFailure(state.expected_seq, None, f"expected seq {state.expected_seq}: block missing")
    finally:
        conn.close()
    return {
        "checked": state.checked,
        "failure": None if failure is None else [failure.seq, failure.block_id, failure.reason],
        "first_prev": None if lo == 1 or first_prev is None else first_prev.hex(),
        "last_chain": state.prev.hex(),
    }


def main() -> None:
    """Read one job ``{"path", "lo", "hi"}`` on stdin; answer in JSON lines on stdout.

    ``{"checked": n}`` lines report progress; the last line is the result."""
    job = json.loads(sys.stdin.read())

    def progress(checked: int) -> None:
        sys.stdout.write(json.dumps({"checked": checked}) + "\n")
        sys.stdout.flush()

    result = walk_range(str(job["path"]), int(job["lo"]), int(job["hi"]), progress)
    sys.stdout.write(json.dumps({"result": result}) + "\n")


if __name__ == "__main__":
    main()
