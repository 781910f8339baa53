"""Keyword search over ``chunks_fts``: the exact BM25 top k, without scoring rows that hold only common words.

FTS5 evaluates ``bm25()`` for every row a MATCH returns (about a microsecond each: one ``%_docsize``
lookup per row), so an OR query containing a word found in 40 % of the chunks scores 40 % of the table
even when 10 rows are wanted. MaxScore (H. Turtle and J. Flood, "Query evaluation: strategies and
optimizations", Information Processing & Management 31(6), 1995) avoids that. A term t adds at most
``idf(t) * (k1 + 1)`` to any row's score (the limit of FTS5's BM25 term weight as the term frequency
grows), so split the query's terms into the common ones C and the rest E: once k rows that contain a
term of E score above the sum of those bounds over C, no row that holds only C terms can enter the top
k. The rows that contain an E term are scored exactly by FTS5 itself, in two queries: ``(E) AND (C)``
scores the rows holding terms of both (bm25() sums over every phrase of the expression, each once, so a
row gets the same score as from the plain ``E OR C`` query), and ``E`` alone scores the rest exactly (they
hold no C term). A row in both lists counts at its first, higher score; one that ``(E) AND (C)`` cut off
has a full score no better than that list's last, so its lower ``E`` score can only tie there. If the
bound does not hold, the least common term of C moves to E and the split is tried again, ending at the
plain OR query, so the result is always the exact top k (up to the order of equal scores).

Only words that are one ASCII token (what FTS5's default ``unicode61`` tokenizer makes of ``[a-z0-9]+``)
have a known document frequency (``chunks_fts_vocab``) and can be bounded; any other word is always in E.
Access filters are applied to the candidates after FTS5 has ranked them, fetching more candidates (four
times as many each round) until k rows pass or the candidates run out.
"""

from __future__ import annotations

import heapq
import math
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_QUERY_WORDS = 64
# FTS5's built-in bm25() uses k1 = 1.2, b = 0.75 (sqlite ext/fts5/fts5_aux.c, fts5Bm25Function) and
# clamps idf at 1e-6 from below; the bound below must use the same constants to stay an upper bound.
BM25_K1 = 1.2
BM25_MIN_IDF = 1e-6
# FTS5 keeps its row count in the "averages" record, row 1 of the %_data table (ext/fts5/fts5_index.c,
# FTS5_AVERAGES_ROWID), as a SQLite varint followed by one varint per column (token totals).
_AVERAGES_ROWID = 1
_ASCII_TOKEN = re.compile(r"^[a-z0-9]+$")
_IN_BATCH = 500
# A split scores the rows of the rare terms twice ((E) AND (C), then E) and counts the common terms' rows
# for their idf; scoring a row costs about as much as the rest together, so a split is tried when the
# common terms hold this many times the rare terms' rows, plus a margin (measured: docs/store-bench.md).
SPLIT_FACTOR = 1.5
SPLIT_MIN_ROWS = 500  # rowids per filter lookup: well under SQLITE_MAX_VARIABLE_NUMBER (32766)


def query_words(text: str) -> list[str]:
    """The words of a keyword query, each once (FTS5 folds case, so ``Spore`` and ``spore`` are one)."""
    seen: set[str] = set()
    out: list[str] = []
    for word in re.findall(r"\w+", text):
        key = word.lower()
        if key not in seen:
            seen.add(key)
            out.append(word)
            if len(out) == MAX_QUERY_WORDS:
                break
    return out


def phrase(word: str) -> str:
    """A word as a quoted FTS5 phrase: no operator, column filter or prefix from user input survives."""
    return '"' + word.replace('"', '""') + '"'


def fts_query(text: str) -> str:
    """A safe FTS5 query: each word quoted, words ORed for recall."""
    return " OR ".join(phrase(w) for w in query_words(text))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A SQLite varint (https://www.sqlite.org/fileformat2.html#varint): value and next position."""
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos + i + 1
    if pos + 8 >= len(data):
        raise ValueError("truncated varint")
    return (value << 8) | data[pos + 8], pos + 9


def fts_row_count(conn: sqlite3.Connection) -> int:
    """Rows in the FTS index, from its averages record; an upper bound (largest rowid) if it cannot be read.

    Only an over-estimate is safe here: the term bounds grow with the row count.
    """
    largest = int(conn.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0])
    row = conn.execute("SELECT block FROM chunks_fts_data WHERE id = ?", (_AVERAGES_ROWID,)).fetchone()
    if row is None or not isinstance(row[0], bytes):
        return largest
    try:
        rows, _ = _varint(row[0], 0)
    except ValueError:
        return largest
    return rows if 0 <= rows <= largest else largest


@dataclass(frozen=True, slots=True)
class _Term:
    position: int  # order in the query, kept inside each sub-query
    phrase: str
    bound: float  # most this term can add to a row's score; inf when unknown
    df: int | None  # rows containing it, when known


def _terms(conn: sqlite3.Connection, words: Sequence[str]) -> list[_Term]:
    rows = fts_row_count(conn)
    out: list[_Term] = []
    for position, word in enumerate(words):
        token = word.lower()
        if not _ASCII_TOKEN.match(token):
            out.append(_Term(position, phrase(word), math.inf, None))
            continue
        found = conn.execute("SELECT doc FROM chunks_fts_vocab WHERE term = ?", (token,)).fetchone()
        df = 0 if found is None else int(found[0])
        # A word in no row adds nothing to any row.
        idf = max(BM25_MIN_IDF, math.log((rows - df + 0.5) / (df + 0.5))) if df else 0.0
        out.append(_Term(position, phrase(word), idf * (BM25_K1 + 1.0), df))
    return out


Hit = tuple[str, str, float]  # memory id, chunk text, score (higher is better)


class _Candidates:
    """Rows of the FTS index that pass the access filter, looked up once per rowid."""

    def __init__(self, conn: sqlite3.Connection, where: str, args: Sequence[Any]) -> None:
        self._conn = conn
        # CROSS JOIN keeps chunks (looked up by rowid) as the outer loop: without it the planner may
        # prefer walking the pool's whole memories_pool_created range (https://www.sqlite.org/optoverview.html#crossjoin).
        self._sql = (
            "SELECT c.id, c.memory_id, c.text FROM chunks c CROSS JOIN memories m ON m.id = c.memory_id"  # noqa: S608 - where is built from fixed column names and ? placeholders
            f" WHERE c.id IN ({{marks}}) AND {where}"
        )
        self._args = list(args)
        self._known: dict[int, tuple[str, str] | None] = {}

    def resolve(self, rowids: Sequence[int]) -> dict[int, tuple[str, str] | None]:
        missing = [r for r in rowids if r not in self._known]
        for start in range(0, len(missing), _IN_BATCH):
            part = missing[start : start + _IN_BATCH]
            for r in part:
                self._known[r] = None
            sql = self._sql.replace("{marks}", ",".join("?" * len(part)))
            for rowid, memory_id, text in self._conn.execute(sql, [*part, *self._args]):
                self._known[int(rowid)] = (str(memory_id), str(text))
        return self._known


def _top(conn: sqlite3.Connection, queries: Sequence[str], k: int, candidates: _Candidates) -> tuple[list[Hit], bool]:
    """Best k distinct memories over the union of ``queries``, a row counted at its best score; True when
    the candidates ran out."""
    # FTS5 scores every matching row whatever the LIMIT, so asking for spare rows costs only their
    # filter lookups, while a second round would score everything again.
    fetch = 2 * k + 16
    while True:
        lists = [
            conn.execute(
                "SELECT rowid, bm25(chunks_fts) AS r FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY r LIMIT ?",
                (q, fetch),
            ).fetchall()
            for q in queries
        ]
        truncated = [len(rows) == fetch for rows in lists]
        # FTS5 ranks are negative bm25 scores, best first. Past the last rank of a list that was cut
        # off, that list may hold unseen rows, so the merged order is only known up to there.
        cutoff = min((rows[-1][1] for rows, cut in zip(lists, truncated, strict=True) if cut), default=math.inf)
        merged = [r for r in heapq.merge(*lists, key=lambda r: float(r[1])) if r[1] <= cutoff]
        known = candidates.resolve([int(r[0]) for r in merged])
        hits: list[Hit] = []
        seen: set[str] = set()
        seen_rows: set[int] = set()
        for rowid, rank in merged:
            if rowid in seen_rows:
                continue  # a row's first (best) score is its full one; see keyword_top
            seen_rows.add(rowid)
            found = known[int(rowid)]
            if found is None or found[0] in seen:
                continue
            seen.add(found[0])
            hits.append((found[0], found[1], -float(rank)))
            if len(hits) == k:
                return hits, False
        if not any(truncated):
            return hits, True
        fetch *= 4


def keyword_top(
    conn: sqlite3.Connection, words: Sequence[str], k: int, where: str, args: Sequence[Any],
    *, split_min_rows: int = SPLIT_MIN_ROWS, split_factor: float = SPLIT_FACTOR,
) -> list[Hit]:
    """The k best memories for ``words`` ORed (best chunk per memory), among those passing ``where``.

    ``where`` refers to ``c`` (chunks) and ``m`` (memories). Exactly the top k of the plain OR query:
    the splits only decide which rows FTS5 has to score.
    """
    if not words or k <= 0:
        return []
    terms = _terms(conn, words)
    candidates = _Candidates(conn, where, args)
    # Common terms first: the longest prefix of this order whose bounds the k-th score beats is skipped.
    bounded = sorted((t for t in terms if t.bound < math.inf), key=lambda t: t.bound)
    for common_count in range(len(bounded) if len(bounded) < len(terms) else len(bounded) - 1, -1, -1):
        common = bounded[:common_count]
        names = {t.position for t in common}
        essential = [t for t in terms if t.position not in names]
        if common and all(t.df is not None for t in essential):
            rare_rows = sum(t.df or 0 for t in essential)
            if rare_rows < k:
                continue  # fewer than k rows hold an essential term: the bound cannot be shown
            if sum(t.df or 0 for t in common) < split_factor * rare_rows + split_min_rows:
                continue  # the split scores the rare rows twice; only worth it when the common terms dominate
        either = " OR ".join(t.phrase for t in essential)
        if not common:
            hits, _ = _top(conn, [either], k, candidates)
            return hits
        rest = " OR ".join(t.phrase for t in sorted(common, key=lambda t: t.position))
        hits, _ = _top(conn, [f"({either}) AND ({rest})", either], k, candidates)
        if len(hits) == k and hits[-1][2] > sum(t.bound for t in common):
            return hits
    return []  # not reached: the last split has no common terms
