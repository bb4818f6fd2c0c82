-- Indexes of distributed and reference tables on the coordinator (pgfleet.indexes maps each to its
-- shards' indexes; the DDL triggers of catalog.sql carry CREATE / ALTER … RENAME / DROP to the shards).
-- Installed after catalog.sql by Fleet.install_catalog(). Static SQL; idempotent.

-- The non-unique indexes of p_relid that back no constraint, as [{name, tail}] (tail: "USING …" of
-- pg_get_indexdef). Unique ones stay on the shards only: PostgreSQL cannot build a unique index on a
-- partitioned table whose partitions are foreign.
CREATE OR REPLACE FUNCTION pgfleet.index_defs(p_relid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('name', c.relname::text,
                                                 'tail', substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*$'))
                              ORDER BY c.relname), '[]')
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = p_relid AND NOT i.indisunique
      AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid)
$$;

-- After distribute / reference: the indexes p_defs (index_defs of the original table) on the
-- coordinator's table, so they are listed (\d, pg_indexes), renamed and dropped there as on one server
-- and the DDL triggers carry that to the shards. A distributed table's parent gets them as partitioned
-- indexes (its foreign partitions have none: the shards have theirs). Run with pgfleet.internal on.
CREATE OR REPLACE FUNCTION pgfleet.adopt_indexes(p_relid oid, p_defs jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    d record;
BEGIN
    FOR d IN SELECT e->>'name' AS name, e->>'tail' AS tail FROM jsonb_array_elements(p_defs) e LOOP
        IF (SELECT relkind FROM pg_class WHERE oid = p_relid) = 'p' THEN
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s %s', d.name, p_relid::regclass, d.tail);
        END IF;
        INSERT INTO pgfleet.indexes (indexrelid, relid, index_name)
        SELECT i.indexrelid, p_relid, d.name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = p_relid AND c.relname = d.name
        ON CONFLICT DO NOTHING;
    END LOOP;
END $$;

-- Undistribute: the parent's own indexes go before the plain table takes their names (the shards'
-- go with the shards). Run with pgfleet.internal on.
CREATE OR REPLACE FUNCTION pgfleet.drop_parent_indexes(p_relid oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    ix oid;
BEGIN
    FOR ix IN SELECT i.indexrelid FROM pgfleet.indexes i JOIN pg_class c ON c.oid = i.relid
              WHERE i.relid = p_relid AND c.relkind = 'p' LOOP
        EXECUTE format('DROP INDEX %s', ix::regclass);
    END LOOP;
END $$;
