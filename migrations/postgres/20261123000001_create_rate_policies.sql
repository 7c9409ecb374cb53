-- Rate-limit policies (SPEC §2). The CHECK constraints mirror the API's validation, so a row
-- written by hand cannot hold what the API would refuse.
CREATE TABLE rate_policies (
    id               uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL
        CHECK (tenant_id = '*' OR tenant_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    endpoint_pattern text        NOT NULL
        CHECK (char_length(endpoint_pattern) BETWEEN 1 AND 1100),
    max_requests     integer     NOT NULL CHECK (max_requests BETWEEN 1 AND 1000000),
    window_seconds   integer     NOT NULL CHECK (window_seconds BETWEEN 1 AND 2678400),
    burst_limit      integer     NOT NULL DEFAULT 0
        CHECK (burst_limit >= 0 AND burst_limit <= max_requests),
    enabled          boolean     NOT NULL DEFAULT true,
    shadow           boolean     NOT NULL DEFAULT false,
    -- Incremented by every update; the etag is derived from it.
    version          bigint      NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rate_policies_tenant_pattern_key UNIQUE (tenant_id, endpoint_pattern)
);

-- Listing by tenant in id (creation) order.
CREATE INDEX rate_policies_tenant_id_idx ON rate_policies (tenant_id, id);

-- Every change tells the instances' snapshot refreshers at once (LISTEN sluice_policies).
CREATE FUNCTION sluice_notify_policy_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sluice_policies',
                      TG_OP || ' ' || COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER rate_policies_notify
AFTER INSERT OR UPDATE OR DELETE ON rate_policies
FOR EACH ROW EXECUTE FUNCTION sluice_notify_policy_change();
