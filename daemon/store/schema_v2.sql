-- mycoedge local store, schema v2: indexes for the memory list and search paths.
-- Applied by daemon.store.db.migrate inside one transaction on top of v1. Never edit a shipped schema file.

-- A pool's items in (created, id) order, so "list a pool" reads its first rows from the index instead of
-- sorting the whole pool (https://www.sqlite.org/queryplanner.html#sorting). Supersedes memories_pool.
DROP INDEX memories_pool;
CREATE INDEX memories_pool_created ON memories(pool, created, id);
-- One owner's items in a pool (the hub's private pool of an agent), in the same order.
CREATE INDEX memories_owner_pool_created ON memories(owner_id, pool, created, id);
-- One owner's items, in the same order (supersedes memories_owner, a prefix of it).
DROP INDEX memories_owner;
CREATE INDEX memories_owner_created ON memories(owner_type, owner_id, created, id);
-- Listing without a pool filter.
CREATE INDEX memories_created ON memories(created, id);

-- Document frequency of each indexed term (https://www.sqlite.org/fts5.html#the_fts5vocab_virtual_table_module):
-- keyword search uses it to bound what common terms can add to a score and skip scoring their documents.
CREATE VIRTUAL TABLE chunks_fts_vocab USING fts5vocab(chunks_fts, 'row');
