-- Shadow results shared by every proxy replica (proxy/shadow/store.py).
-- Counts only ever grow by additive upserts, so replicas never overwrite each other.

-- One row per shadowed route that ever wrote: what the route table said of it
-- last, and the per-route totals that are not per outcome or per group.
CREATE TABLE club_proxy_shadow.routes (
    route_id text PRIMARY KEY,
    shadow_to text,
    min_requests integer,
    min_match double precision,
    noise_samples bigint NOT NULL DEFAULT 0,
    groups_dropped bigint NOT NULL DEFAULT 0,
    examples_dropped bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Requests per outcome; reason is '' for match, mismatch and noise.
CREATE TABLE club_proxy_shadow.outcomes (
    route_id text NOT NULL,
    outcome text NOT NULL,
    reason text NOT NULL DEFAULT '',
    n bigint NOT NULL,
    PRIMARY KEY (route_id, outcome, reason)
);

-- One row per difference signature (`changed:$.items[*].x`) of a route.
-- count: requests where primary and candidate differed there; counted: of
-- those, the ones it made a mismatch; noise_count: noise samples where the
-- primary differed from itself there.
CREATE TABLE club_proxy_shadow.groups (
    route_id text NOT NULL,
    signature text NOT NULL,
    kind text NOT NULL,
    path text NOT NULL,
    count bigint NOT NULL DEFAULT 0,
    counted bigint NOT NULL DEFAULT 0,
    noise_count bigint NOT NULL DEFAULT 0,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (route_id, signature)
);

-- Retention deletes by last_seen.
CREATE INDEX groups_last_seen ON club_proxy_shadow.groups (last_seen);

-- At most five examples per group: slots 0-3 the first ones, slot 4 the latest.
CREATE TABLE club_proxy_shadow.examples (
    route_id text NOT NULL,
    signature text NOT NULL,
    slot smallint NOT NULL CHECK (slot BETWEEN 0 AND 4),
    at timestamptz NOT NULL,
    example jsonb NOT NULL,
    PRIMARY KEY (route_id, signature, slot),
    FOREIGN KEY (route_id, signature)
        REFERENCES club_proxy_shadow.groups (route_id, signature) ON DELETE CASCADE
);
