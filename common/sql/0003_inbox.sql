-- Consumer-side de-duplication (see common/bus.py): a consumer records each event it applied
-- in the same transaction as the event's effects, so a redelivered event is recognised and
-- skipped, and the effects and the record commit or roll back together.
CREATE TABLE {schema}.inbox (
    consumer    text NOT NULL,
    event_id    uuid NOT NULL,
    stream_seq  bigint,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX inbox_received ON {schema}.inbox (received_at);
