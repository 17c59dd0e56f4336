-- Queries of PgQueue's durable mode (legacy_compat/_outbox.py), loaded by name.
-- The schema they run against is outbox.sql.

-- name: register_consumer
-- A new consumer starts at the current end of the outbox: it is not handed
-- the retained history (that could re-send a week of pushes).
INSERT INTO club_event_consumers (name, last_id)
VALUES ($1, (SELECT COALESCE(max(id), 0) FROM club_events))
ON CONFLICT (name) DO NOTHING;

-- name: lock_consumer
-- Session advisory lock: held by one connection per consumer name at a time,
-- released by PostgreSQL when that connection ends for any reason.
SELECT pg_try_advisory_lock(72431, lock_key) FROM club_event_consumers WHERE name = $1;

-- name: read_offset
SELECT last_id FROM club_event_consumers WHERE name = $1;

-- name: save_offset
UPDATE club_event_consumers SET last_id = $2, updated_at = now()
WHERE name = $1 AND last_id < $2;

-- name: fetch_events
-- $1 last id, $2 limit, $3/$4 the snapshot and xid recorded when a gap was
-- first seen (NULL otherwise). `settled`: every transaction that could still
-- have held a missing id at that time has ended, as of this statement's
-- snapshot, so ids still missing now will never appear (docs/events.md).
WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s)
SELECT
    e.id,
    e.type,
    e.payload::text AS payload,
    floor(extract(epoch FROM e.created_at))::bigint AS created_at,
    snap.s::text AS snapshot,
    $3::text IS NOT NULL AND NOT EXISTS (
        SELECT FROM pg_snapshot_xip(snap.s) AS running (xid)
        WHERE running.xid <= $4::text::xid8
          AND NOT pg_visible_in_snapshot(running.xid, $3::text::pg_snapshot)
    ) AS settled
FROM club_events AS e, snap
WHERE e.id > $1
ORDER BY e.id
LIMIT $2;

-- name: xid_now
-- An xid newer than every transaction that had started writing before the
-- previous statement's snapshot (costs one xid; only used when a gap is seen).
SELECT pg_current_xact_id()::text;

-- name: emit
SELECT club_emit($1, $2::text::jsonb);
