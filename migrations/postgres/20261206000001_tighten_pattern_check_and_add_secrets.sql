-- The endpoint_pattern CHECK now mirrors the API's own rule: at most 1024 bytes (the API counts
-- bytes, not characters), and the shape of a canonical pattern: `*`, or an optional uppercase
-- method and one space, then a path that starts with `/`.
ALTER TABLE rate_policies DROP CONSTRAINT rate_policies_endpoint_pattern_check;
ALTER TABLE rate_policies ADD CONSTRAINT rate_policies_endpoint_pattern_check
    CHECK (octet_length(endpoint_pattern) BETWEEN 1 AND 1024
           AND (endpoint_pattern = '*' OR endpoint_pattern ~ '^([A-Z]{1,20} )?/'));

-- Secrets every instance on this database shares, created by the first instance that needs one
-- (INSERT … ON CONFLICT DO NOTHING, then read back). `page_tokens` signs ListPolicies page
-- tokens, so they stay tamper-evident when the only JWT keys configured are public ones.
CREATE TABLE sluice_secrets (
    name  text  PRIMARY KEY,
    value bytea NOT NULL CHECK (octet_length(value) >= 32)
);
