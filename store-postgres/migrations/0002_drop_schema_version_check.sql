-- Annals PostgreSQL store, schema version 2.
--
-- Drops the CHECK on `events.schema_version`. The store refuses schema version 0 before it
-- writes (`Limits::check`) and the column only ever receives a `u16`, so the check could never
-- fail; but PostgreSQL rebuilds every CHECK expression for every INSERT statement, which cost a
-- single-event append about 3% of its server time.
ALTER TABLE __SCHEMA__.events DROP CONSTRAINT IF EXISTS events_schema_version_check;
