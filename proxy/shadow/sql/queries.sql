-- Queries of the shadow results store (proxy/shadow/store.py), loaded by name.
-- The schema is built by the numbered migrations beside this file.
-- Advisory lock keys: class 72440 (legacy_compat uses 72431); 1 migrations, 2 writes.

-- name: lock_migrations
-- Two replicas starting together apply each migration once: the second waits here.
SELECT pg_advisory_xact_lock(72440, 1);

-- name: create_migrations
CREATE SCHEMA IF NOT EXISTS club_proxy_shadow;
CREATE TABLE IF NOT EXISTS club_proxy_shadow.schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_versions
SELECT version FROM club_proxy_shadow.schema_migrations;

-- name: record_migration
INSERT INTO club_proxy_shadow.schema_migrations (version) VALUES ($1);

-- name: lock_writes
-- One writer at a time over all replicas: the group bound per route is
-- checked against what is stored, so two flushes must not interleave.
SELECT pg_advisory_xact_lock(72440, 2);

-- name: reset_routes
WITH gone_outcomes AS (
    DELETE FROM club_proxy_shadow.outcomes WHERE route_id = ANY($1::text[])
),
gone_groups AS (
    DELETE FROM club_proxy_shadow.groups WHERE route_id = ANY($1::text[])
)
DELETE FROM club_proxy_shadow.routes WHERE route_id = ANY($1::text[]);

-- name: delete_expired
-- Retention: examples go with their group (ON DELETE CASCADE).
DELETE FROM club_proxy_shadow.groups WHERE last_seen < $1;

-- name: stored_signatures
SELECT route_id, signature FROM club_proxy_shadow.groups WHERE route_id = ANY($1::text[]);

-- name: upsert_route
INSERT INTO club_proxy_shadow.routes AS r (
    route_id, shadow_to, min_requests, min_match,
    noise_samples, groups_dropped, examples_dropped, updated_at
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (route_id) DO UPDATE SET
    shadow_to = coalesce(excluded.shadow_to, r.shadow_to),
    min_requests = coalesce(excluded.min_requests, r.min_requests),
    min_match = coalesce(excluded.min_match, r.min_match),
    noise_samples = r.noise_samples + excluded.noise_samples,
    groups_dropped = r.groups_dropped + excluded.groups_dropped,
    examples_dropped = r.examples_dropped + excluded.examples_dropped,
    updated_at = greatest(r.updated_at, excluded.updated_at);

-- name: upsert_outcome
INSERT INTO club_proxy_shadow.outcomes AS o (route_id, outcome, reason, n)
VALUES ($1, $2, $3, $4)
ON CONFLICT (route_id, outcome, reason) DO UPDATE SET n = o.n + excluded.n;

-- name: upsert_group
INSERT INTO club_proxy_shadow.groups AS g (
    route_id, signature, kind, path, count, counted, noise_count, first_seen, last_seen
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (route_id, signature) DO UPDATE SET
    count = g.count + excluded.count,
    counted = g.counted + excluded.counted,
    noise_count = g.noise_count + excluded.noise_count,
    first_seen = least(g.first_seen, excluded.first_seen),
    last_seen = greatest(g.last_seen, excluded.last_seen);

-- name: add_example
-- Into the first free slot before the latest-example slot ($5): replicas
-- number their examples each on its own, so a local slot number means nothing here.
INSERT INTO club_proxy_shadow.examples (route_id, signature, slot, at, example)
SELECT $1, $2, free.slot, $3, $4::jsonb
FROM (
    SELECT s.slot FROM generate_series(0, $5 - 1) AS s (slot)
    WHERE NOT EXISTS (
        SELECT FROM club_proxy_shadow.examples AS e
        WHERE e.route_id = $1 AND e.signature = $2 AND e.slot = s.slot
    )
    ORDER BY s.slot
    LIMIT 1
) AS free;

-- name: set_latest_example
-- The latest-example slot ($3) takes an example newer than the one it holds.
INSERT INTO club_proxy_shadow.examples AS e (route_id, signature, slot, at, example)
VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (route_id, signature, slot) DO UPDATE SET at = excluded.at, example = excluded.example
WHERE excluded.at > e.at;

-- name: noise_stats
-- What every replica learned of the primary's noise, for the next decisions.
SELECT r.route_id, r.noise_samples, g.signature, g.noise_count
FROM club_proxy_shadow.routes AS r
LEFT JOIN club_proxy_shadow.groups AS g ON g.route_id = r.route_id AND g.noise_count > 0
WHERE r.noise_samples > 0;

-- name: read_routes
SELECT route_id, shadow_to, min_requests, min_match, noise_samples, groups_dropped, examples_dropped
FROM club_proxy_shadow.routes
WHERE $1::text IS NULL OR route_id = $1;

-- name: read_outcomes
SELECT route_id, outcome, reason, n
FROM club_proxy_shadow.outcomes
WHERE $1::text IS NULL OR route_id = $1;

-- name: read_groups
SELECT route_id, signature, count, counted, noise_count, first_seen, last_seen
FROM club_proxy_shadow.groups
WHERE $1::text IS NULL OR route_id = $1;

-- name: read_examples
SELECT route_id, signature, slot, at, example::text AS example
FROM club_proxy_shadow.examples
WHERE $1::text IS NULL OR route_id = $1;

-- name: route_exists
SELECT EXISTS (SELECT FROM club_proxy_shadow.routes WHERE route_id = $1)
    OR EXISTS (SELECT FROM club_proxy_shadow.outcomes WHERE route_id = $1)
    OR EXISTS (SELECT FROM club_proxy_shadow.groups WHERE route_id = $1);
