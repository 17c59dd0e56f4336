-- legacy_compat durable event outbox (PgQueue durable mode, docs/events.md).
--
-- Apply with `psql -v ON_ERROR_STOP=1 -f outbox.sql` (or as one script through
-- any driver). It is idempotent and touches nothing but its own objects, so it
-- applies to an empty database and next to club-api's schema and triggers.
--
--   club_events            the outbox: one row per event, written in the same
--                          transaction as the change it describes
--   club_event_consumers   one row per consumer name: its last processed id
--   club_emit(type, payload) -> id
--                          inserts an event and NOTIFYs its id on channel
--                          `club_events` (a wake-up hint; the table is the truth)
--   club_events_cleanup(retain, max_age) -> deleted rows
--                          retention: run it from cron or the app (docs/events.md)
--
-- Ordering rule the consumer relies on: a transaction gets its xid BEFORE its
-- event id (club_events_next_id), so a missing id below a visible one belongs
-- to a transaction the consumer can see as in progress in its snapshot. Never
-- give club_events_id_seq a CACHE above 1: ids must be handed out in time order.

CREATE SEQUENCE IF NOT EXISTS club_events_id_seq AS bigint;

CREATE OR REPLACE FUNCTION club_events_next_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- Force the xid first (see the ordering rule above), then take the id.
    PERFORM pg_current_xact_id();
    RETURN nextval('club_events_id_seq');
END;
$$;

CREATE TABLE IF NOT EXISTS club_events (
    id          bigint      PRIMARY KEY DEFAULT club_events_next_id(),
    type        text        NOT NULL CHECK (type <> ''),
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(payload) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE club_events_id_seq OWNED BY club_events.id;
CREATE INDEX IF NOT EXISTS club_events_created_at_idx ON club_events (created_at);

CREATE TABLE IF NOT EXISTS club_event_consumers (
    name        text        PRIMARY KEY CHECK (name <> ''),
    -- The second key of the consumer's session advisory lock (the first is
    -- the constant 72431): unique per name, so two names never share a lock.
    lock_key    integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    last_id     bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION club_emit(type text, payload jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO club_events (type, payload)
    VALUES (club_emit.type, COALESCE(club_emit.payload, '{}'::jsonb))
    RETURNING id INTO new_id;
    -- Only the id travels: a payload of 8000 bytes or more would abort the
    -- caller's transaction, and the consumer reads the row anyway.
    PERFORM pg_notify('club_events', new_id::text);
    RETURN new_id;
END;
$$;

-- Deletes events older than `retain` that every consumer has processed, and,
-- when `max_age` is given, events older than that whether processed or not (a
-- consumer that was abandoned must not keep the table growing for ever).
CREATE OR REPLACE FUNCTION club_events_cleanup(
    retain interval DEFAULT interval '7 days', max_age interval DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    horizon bigint;
    deleted bigint;
BEGIN
    SELECT COALESCE(min(last_id), 9223372036854775807) INTO horizon FROM club_event_consumers;
    DELETE FROM club_events
    WHERE (created_at < now() - retain AND id <= horizon)
       OR (max_age IS NOT NULL AND created_at < now() - max_age);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$;
