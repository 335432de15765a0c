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

-- One row per stream with its current version. Appends lock this row (an upsert or update whose
-- WHERE clause is the expected-version check), which serialises appends to one stream without
-- a read-then-insert window.
CREATE TABLE __SCHEMA__.streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version >= 1)
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

-- The whole append in one statement (one round trip):
--
-- 1. ids already stored → status 1, one row per stored id (the client decides: retry or
--    idempotency conflict);
-- 2. take the stream's advisory lock, then lock the stream row and check the expected version
--    in the same statement; on a mismatch
--    look for the ids again (a concurrent retry may have just committed them), else status 2
--    with the actual version;
-- 3. insert the batch with one multi-row INSERT from arrays → status 0 with the first version,
--    the transaction id and the first and last sequence numbers.
--
-- p_expected: -1 any, -2 stream exists, n >= 0 exactly n (0 = no stream).
CREATE FUNCTION __SCHEMA__.append_events(
    p_stream          text,
    p_expected        bigint,
    p_ids             uuid[],
    p_types           text[],
    p_schema_versions integer[],
    p_content_types   text[],
    p_payloads        bytea[],
    p_correlations    uuid[],
    p_causations      uuid[],
    p_timestamps      timestamptz[],
    p_headers         jsonb[]
) RETURNS TABLE (
    status     integer,
    event_id   uuid,
    stream_id  text,
    version    bigint,
    xid        xid8,
    first_seq  bigint,
    last_seq   bigint
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    n          bigint := cardinality(p_ids);
    v_new      bigint;
    v_actual   bigint;
    v_xid      xid8;
    v_first    bigint;
    v_last     bigint;
BEGIN
    RETURN QUERY
        SELECT 1, e.event_id, e.stream_id, e.version, e.transaction_id, e.seq, e.seq
        FROM __SCHEMA__.events e
        WHERE e.event_id = ANY (p_ids);
    IF FOUND THEN
        RETURN;
    END IF;

    -- Serialise appends to this stream *before* this transaction gets its id: the next append
    -- to the stream then gets a larger transaction id, so a stream's versions are in global
    -- order too. (A row lock would not do: taking one assigns the transaction id first.) The
    -- two-key form keeps these locks apart from single-key advisory locks such as leases.
    PERFORM pg_advisory_xact_lock(hashtext('__SCHEMA__'), hashtext(p_stream));
    v_xid := pg_current_xact_id();

    IF p_expected = -1 OR p_expected = 0 THEN
        -- The stream may be new: insert its row, or lock the existing one if the check holds.
        INSERT INTO __SCHEMA__.streams AS s (stream_id, version)
        VALUES (p_stream, n)
        ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE
            SET version = s.version + n
            WHERE p_expected = -1
        RETURNING s.version INTO v_new;
    ELSE
        UPDATE __SCHEMA__.streams AS s
            SET version = s.version + n
            WHERE s.stream_id = p_stream AND (p_expected = -2 OR s.version = p_expected)
        RETURNING s.version INTO v_new;
    END IF;

    IF v_new IS NULL THEN
        RETURN QUERY
            SELECT 1, e.event_id, e.stream_id, e.version, e.transaction_id, e.seq, e.seq
            FROM __SCHEMA__.events e
            WHERE e.event_id = ANY (p_ids);
        IF FOUND THEN
            RETURN;
        END IF;
        SELECT s.version INTO v_actual FROM __SCHEMA__.streams s WHERE s.stream_id = p_stream;
        RETURN QUERY SELECT 2, NULL::uuid, p_stream, coalesce(v_actual, 0), NULL::xid8, 0::bigint, 0::bigint;
        RETURN;
    END IF;

    WITH inserted AS (
        INSERT INTO __SCHEMA__.events (stream_id, version, event_id, event_type, schema_version,
            content_type, payload, correlation_id, causation_id, event_timestamp, headers)
        SELECT p_stream, v_new - n + u.ord, u.id, u.typ, u.sv, u.ct, u.pl, u.co, u.ca, u.ts, u.hd
        FROM unnest(p_ids, p_types, p_schema_versions, p_content_types, p_payloads,
                    p_correlations, p_causations, p_timestamps, p_headers)
             WITH ORDINALITY AS u(id, typ, sv, ct, pl, co, ca, ts, hd, ord)
        ORDER BY u.ord
        RETURNING seq
    )
    SELECT min(seq), max(seq) INTO v_first, v_last FROM inserted;

    RETURN QUERY SELECT 0, NULL::uuid, p_stream, v_new - n + 1, v_xid, v_first, v_last;
END;
$$;
