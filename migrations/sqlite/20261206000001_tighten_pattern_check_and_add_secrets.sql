-- The endpoint_pattern CHECK now mirrors the API's own rule: at most 1024 bytes (the API counts
-- bytes, not characters), and the shape of a canonical pattern: `*`, or an optional uppercase
-- method and one space, then a path that starts with `/`. SQLite cannot alter a CHECK, so the
-- table is rebuilt (inside the migration's transaction) with every row copied unchanged.
CREATE TABLE rate_policies_rebuilt (
    id               BLOB    PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    tenant_id        TEXT    NOT NULL
        CHECK (tenant_id = '*'
               OR (length(tenant_id) BETWEEN 1 AND 64
                   AND length(CAST(tenant_id AS BLOB)) = length(tenant_id)
                   AND tenant_id NOT GLOB '*[^A-Za-z0-9._-]*')),
    endpoint_pattern TEXT    NOT NULL
        CHECK (length(CAST(endpoint_pattern AS BLOB)) BETWEEN 1 AND 1024
               AND (endpoint_pattern = '*'
                    OR endpoint_pattern GLOB '/*'
                    OR endpoint_pattern GLOB '[A-Z]* /*')),
    max_requests     INTEGER NOT NULL CHECK (max_requests BETWEEN 1 AND 1000000),
    window_seconds   INTEGER NOT NULL CHECK (window_seconds BETWEEN 1 AND 2678400),
    burst_limit      INTEGER NOT NULL DEFAULT 0
        CHECK (burst_limit >= 0 AND burst_limit <= max_requests),
    enabled          INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    shadow           INTEGER NOT NULL DEFAULT 0 CHECK (shadow IN (0, 1)),
    version          INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL CHECK (updated_at >= created_at),
    CONSTRAINT rate_policies_tenant_pattern_key UNIQUE (tenant_id, endpoint_pattern)
) STRICT;

INSERT INTO rate_policies_rebuilt
    (id, tenant_id, endpoint_pattern, max_requests, window_seconds, burst_limit, enabled, shadow,
     version, created_at, updated_at)
SELECT id, tenant_id, endpoint_pattern, max_requests, window_seconds, burst_limit, enabled, shadow,
       version, created_at, updated_at
FROM rate_policies;

DROP TABLE rate_policies;
ALTER TABLE rate_policies_rebuilt RENAME TO rate_policies;

-- Listing by tenant in id (creation) order.
CREATE INDEX rate_policies_tenant_id_idx ON rate_policies (tenant_id, id);

-- Secrets shared by every process on this database file, created by the first one that needs
-- one (INSERT OR IGNORE, then read back). `page_tokens` signs ListPolicies page tokens.
CREATE TABLE sluice_secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL CHECK (length(value) >= 32)
) STRICT;
