-- The transactional outbox (see common/outbox.py): events written in the producer's own
-- transaction, published to JetStream by the relay.
CREATE TABLE {schema}.outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    subject        text NOT NULL,
    event_type     text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    aggregate_seq  bigint NOT NULL CHECK (aggregate_seq > 0),
    payload        bytea NOT NULL,
    headers        jsonb NOT NULL DEFAULT jsonb_build_object(),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at   timestamptz,
    UNIQUE (aggregate_type, aggregate_id, aggregate_seq)
);

-- The relay selects by "not yet published", never by "id above the last one published": a
-- transaction that took a low id and commits late would fall behind such a high-water mark
-- and never be sent. The partial index keeps that selection cheap however long the table is.
CREATE INDEX outbox_pending ON {schema}.outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON {schema}.outbox (published_at) WHERE published_at IS NOT NULL;

-- One counter row per aggregate. Producers bump it with INSERT .. ON CONFLICT DO UPDATE, which
-- row-locks it until their transaction ends: producers of one aggregate are serialised, so
-- its sequence numbers are gap-free and commit in sequence order. Rows are never pruned, or a
-- sequence would restart at 1.
CREATE TABLE {schema}.outbox_aggregates (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    last_seq       bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Wakes the relay. NOTIFY is delivered only when the inserting transaction commits, and
-- identical notifications of one transaction are folded into one.
CREATE FUNCTION {schema}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('medsched_outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify();
