-- Rate-limit policies (SPEC §2), the SQLite twin of migrations/postgres. The CHECK constraints
-- mirror the API's validation, so a row written by hand cannot hold what the API would refuse.
-- STRICT makes SQLite enforce the column types instead of storing whatever it is given.
--
-- Representation choices (the store in src/store/sqlite.rs relies on them):
-- * id: the UUID's 16 bytes. BLOBs compare bytewise, as PostgreSQL's uuid does, so ORDER BY id
--   is creation order for UUIDv7 ids.
-- * created_at, updated_at: microseconds since the Unix epoch, UTC. Integers keep microsecond
--   precision exactly and let an update bump updated_at by at least 1 µs in plain SQL.
--   Readable form: strftime('%Y-%m-%d %H:%M:%f', created_at / 1e6, 'unixepoch').
-- * enabled, shadow: 0 or 1.
CREATE TABLE rate_policies (
    id               BLOB    PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    -- length(text) stops at a NUL byte, so comparing it with the byte length also refuses NULs,
    -- which GLOB would not see.
    tenant_id        TEXT    NOT NULL
        CHECK (tenant_id = '*'
               OR (length(tenant_id) BETWEEN 1 AND 64
                   AND length(CAST(tenant_id AS BLOB)) = length(tenant_id)
                   AND tenant_id NOT GLOB '*[^A-Za-z0-9._-]*')),
    endpoint_pattern TEXT    NOT NULL
        CHECK (length(endpoint_pattern) BETWEEN 1 AND 1100),
    max_requests     INTEGER NOT NULL CHECK (max_requests BETWEEN 1 AND 1000000),
    window_seconds   INTEGER NOT NULL CHECK (window_seconds BETWEEN 1 AND 2678400),
    burst_limit      INTEGER NOT NULL DEFAULT 0
        CHECK (burst_limit >= 0 AND burst_limit <= max_requests),
    enabled          INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    shadow           INTEGER NOT NULL DEFAULT 0 CHECK (shadow IN (0, 1)),
    -- Incremented by every update; the etag is derived from it.
    version          INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL CHECK (updated_at >= created_at),
    CONSTRAINT rate_policies_tenant_pattern_key UNIQUE (tenant_id, endpoint_pattern)
) STRICT;

-- Listing by tenant in id (creation) order.
CREATE INDEX rate_policies_tenant_id_idx ON rate_policies (tenant_id, id);
