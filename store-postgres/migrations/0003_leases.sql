-- Annals PostgreSQL store, schema version 3.
--
-- Leases on a table instead of session advisory locks: a lease is held while its holder renews
-- it, is taken over once it has not been renewed for its time to live (a paused process keeps
-- its session and would keep an advisory lock for ever), and carries an epoch that grows with
-- every grant, which fences former holders inside their own transactions.
CREATE TABLE IF NOT EXISTS __SCHEMA__.leases (
    name        text        PRIMARY KEY,
    holder      text,
    epoch       bigint      NOT NULL,
    renewed     timestamptz NOT NULL,
    expires     timestamptz NOT NULL
);
