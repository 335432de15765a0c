-- Annals PostgreSQL store, schema version 1.
--
-- `__SCHEMA__` is replaced by the store's (quoted) schema name before this runs; `init()` runs it
-- once, in a transaction, and records version 1 in `schema_version`.

-- Every event, in one global order: (transaction_id, seq).
--
-- `transaction_id` is the id of the transaction that wrote the row. Readers of the global log
-- only read rows whose transaction id is below `pg_snapshot_xmin(pg_current_snapshot())`, the
-- oldest transaction still running: no row can ever appear below that line later, so a reader
-- that pages in (transaction_id, seq) order never skips one.
CREATE TABLE __SCHEMA__.events (
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq             bigserial   NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL CHECK (version >= 1),
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version BETWEEN 1 AND 65535),
    content_type    text        NOT NULL,
    payload         bytea       NOT NULL,
    correlation_id  uuid,
    causation_id    uuid,
    event_timestamp timestamptz NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_position_key PRIMARY KEY (transaction_id, seq),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

CREATE TABLE __SCHEMA__.snapshots (
    stream_id      text        PRIMARY KEY,
    version        bigint      NOT NULL,
    schema_version integer     NOT NULL,
    content_type   text        NOT NULL,
    payload        bytea       NOT NULL,
    taken_at       timestamptz NOT NULL
);

-- Positions are stored as the two's-complement bit pattern of the u64 parts, so any position
-- round-trips.
CREATE TABLE __SCHEMA__.checkpoints (
    name       text        PRIMARY KEY,
    commit_pos bigint      NOT NULL,
    prepare    bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
