-- mycoedge local store, schema v1. Applied by daemon.store.db.migrate inside one transaction;
-- PRAGMA user_version records it. Never edit a shipped schema file: add schema_v2.sql instead.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Public keys of every signer that ever signed a checkpoint, so old signatures stay verifiable
-- after a key rotation (e.g. software key -> TPM key).
CREATE TABLE signers (
    key_id     TEXT PRIMARY KEY,
    algorithm  TEXT NOT NULL,
    public_key BLOB NOT NULL,
    added      REAL NOT NULL
);

-- MAIF block log. chain_hash = SHA-256(prev_hash || header || payload || metadata), see
-- daemon/store/blocklog.py; prev_hash of the first block is 32 zero bytes. metadata is canonical JSON.
CREATE TABLE blocks (
    seq          INTEGER PRIMARY KEY,
    block_id     BLOB NOT NULL UNIQUE,
    fourcc       TEXT NOT NULL,
    flags        INTEGER NOT NULL,
    ts_us        INTEGER NOT NULL,
    metadata     BLOB NOT NULL,
    payload      BLOB NOT NULL,
    prev_hash    BLOB NOT NULL,
    chain_hash   BLOB NOT NULL
);

-- A signature over a chain head, written in the same transaction as the records it covers.
CREATE TABLE checkpoints (
    id        INTEGER PRIMARY KEY,
    chain     TEXT NOT NULL,
    upto_seq  INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    key_id    TEXT NOT NULL REFERENCES signers(key_id),
    signature BLOB NOT NULL,
    ts        REAL NOT NULL
);
CREATE INDEX checkpoints_chain ON checkpoints(chain, upto_seq);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    ts        REAL NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    subject   TEXT NOT NULL,
    data      TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE INDEX audit_kind ON audit(kind, seq);
CREATE INDEX audit_actor ON audit(actor, seq);

-- AUTOINCREMENT: a sequence number is never reused after its records were acknowledged and deleted,
-- so the uplink's "ack up to seq" can never remove a record appended later. The "maif" stream is not
-- stored here: it is the blocks table read after a cursor (see daemon/store/outbox.py).
CREATE TABLE outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream    TEXT NOT NULL,
    record_id TEXT NOT NULL,
    payload   BLOB NOT NULL,
    created   REAL NOT NULL,
    nbytes    INTEGER NOT NULL
);
CREATE INDEX outbox_stream ON outbox(stream, seq);

CREATE TABLE readings (
    id         INTEGER PRIMARY KEY,
    device_id  TEXT NOT NULL,
    sensor     TEXT NOT NULL,
    ts         REAL NOT NULL,
    seq        INTEGER NOT NULL,
    valid      INTEGER NOT NULL,
    quantities TEXT NOT NULL,
    meta       TEXT NOT NULL
);
CREATE INDEX readings_device ON readings(device_id, ts);

CREATE TABLE memories (
    id         TEXT PRIMARY KEY,
    owner_type TEXT NOT NULL,
    owner_id   TEXT NOT NULL,
    pool       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    type       TEXT NOT NULL CHECK (type IN ('short_term', 'long_term', 'profile')),
    content    TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    visibility TEXT NOT NULL,
    ttl_s      REAL,
    expires_at REAL,
    created    REAL NOT NULL,
    updated    REAL NOT NULL
);
CREATE INDEX memories_owner ON memories(owner_type, owner_id);
CREATE INDEX memories_pool ON memories(pool);
CREATE INDEX memories_expires ON memories(expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE chunks (
    id        INTEGER PRIMARY KEY,
    memory_id TEXT NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    text      TEXT NOT NULL
);
CREATE INDEX chunks_memory ON chunks(memory_id, idx);

CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id');

CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
