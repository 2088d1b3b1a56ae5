-- Extensions the services rely on, installed once per database into `public`, which stays on
-- every migration's search_path so their operator classes resolve from any service schema.
--   btree_gist: exclusion constraints that mix equality and range overlap
--               (`EXCLUDE USING gist (resource_id WITH =, during WITH &&)` in booking).
-- The lock serialises this file across migrators of *different* schemas (each of which holds
-- only its own schema's lock): two concurrent CREATE EXTENSION IF NOT EXISTS of the same
-- extension can both pass the existence check and one then fails on a unique violation.
SELECT pg_advisory_xact_lock(hashtextextended('medsched.migrations.extensions', 0));
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public;
