-- Primary keys and unique constraints of distributed tables added or dropped after distribution.
-- PostgreSQL refuses a unique index on a partitioned table whose partitions are foreign tables, so, as for
-- the keys a table has when it is distributed, they live on its shards only: each shard enforces the
-- constraint on its own rows, which is the whole table's constraint because it includes the distribution
-- column (rows with equal keys are in one shard). The shards' constraints are named with
-- shard_object_name(name, shard id), like those made at distribution; undistribute and reshard take them
-- from the first shard. The router turns ALTER TABLE … ADD [CONSTRAINT n] UNIQUE | PRIMARY KEY (…) and DROP
-- CONSTRAINT n of such a table into these calls (router/ddl.py). Installed after foreign_keys.sql. Static
-- SQL; idempotent.

CREATE OR REPLACE FUNCTION pgfleet.add_unique_constraint(p_table regclass, p_name text, p_columns text[],
                                                         p_primary bool DEFAULT false,
                                                         deferral text DEFAULT 'NOT DEFERRABLE',
                                                         nulls_not_distinct bool DEFAULT false)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet, public AS $$
DECLARE
    t pgfleet.tables;
    sh pgfleet.shards;
    c text;
    cols text;
    kept text;
    typed text;
    probes text[] := '{}';
    found text;
BEGIN
    SELECT * INTO t FROM pgfleet.tables WHERE relid = p_table;
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = p_table), 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table %', p_table USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF t.method IS NULL OR t.method NOT IN ('hash', 'range', 'list') THEN
        RAISE EXCEPTION '% is not a distributed table', p_table USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'on plain and reference tables use ALTER TABLE … ADD CONSTRAINT';
    END IF;
    IF upper(deferral) NOT IN ('NOT DEFERRABLE', 'DEFERRABLE INITIALLY IMMEDIATE', 'DEFERRABLE INITIALLY DEFERRED') THEN
        RAISE EXCEPTION 'deferral must be NOT DEFERRABLE, DEFERRABLE INITIALLY IMMEDIATE or DEFERRABLE INITIALLY DEFERRED, not %',
            deferral USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_columns) IS NULL OR cardinality(p_columns) = 0 THEN
        RAISE EXCEPTION 'a unique constraint needs at least one column' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH c IN ARRAY p_columns LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = p_table AND attname = c AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'column "%" named in key does not exist', c USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
    IF NOT t.key_column = ANY (p_columns) THEN
        RAISE EXCEPTION 'a unique constraint on distributed table % must include its distribution column %', p_table, t.key_column
            USING ERRCODE = 'feature_not_supported',
                  HINT = format('each shard enforces the constraint on its own rows: add %I to its columns', t.key_column);
    END IF;
    -- as ALTER TABLE … ADD: no name means <table>_pkey or <table>_<columns>_key (without PostgreSQL's
    -- truncation and numbering)
    p_name := coalesce(p_name, format(CASE WHEN p_primary THEN '%s_pkey' ELSE '%s_%s_key' END,
                                      (SELECT relname FROM pg_class WHERE oid = p_table), array_to_string(p_columns, '_')));
    IF EXISTS (SELECT FROM pg_constraint WHERE conrelid = p_table AND conname = p_name)
            OR EXISTS (SELECT FROM pgfleet.foreign_keys f WHERE f.relid = p_table AND f.name = p_name) THEN
        RAISE EXCEPTION 'constraint "%" for relation % already exists', p_name, p_table USING ERRCODE = 'duplicate_object';
    END IF;
    -- rows that break it: the error now, in the logical table's terms, as ALTER TABLE … ADD gives it on one
    -- server (the shards would refuse it only at COMMIT), duplicates before nulls as PostgreSQL 18 checks
    -- them, the first in the key's order. Each shard finds its own (the columns include the distribution
    -- column: equal keys are on one shard), on the link of flush_queue() in autocommit: a read through
    -- postgres_fdw would hold the shard's lock until COMMIT, where the ADD waits for it.
    cols := (SELECT string_agg(format('%I', x), ', ') FROM unnest(p_columns) x);
    kept := CASE WHEN nulls_not_distinct THEN 'true'
                 ELSE (SELECT string_agg(format('%I IS NOT NULL', x), ' AND ') FROM unnest(p_columns) x) END;
    typed := (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY o)
              FROM unnest(p_columns) WITH ORDINALITY AS u(x, o) JOIN pg_attribute a ON a.attrelid = p_table AND a.attname = u.x);
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_id LOOP
        PERFORM pgfleet.worker_link(sh.node);
        IF cardinality(probes) = 0 AND EXISTS (  -- the name taken by a constraint only the shards hold
                SELECT FROM dblink('pgfleet_' || sh.node, format(
                    'SELECT 1 FROM pg_constraint WHERE conrelid = %L::regclass AND conname = %L',
                    format('%I.%I', sh.shard_schema, sh.shard_table), pgfleet.shard_object_name(p_name, sh.shard_id)))
                AS d(f int)) THEN
            RAISE EXCEPTION 'constraint "%" for relation % already exists', p_name, p_table USING ERRCODE = 'duplicate_object';
        END IF;
        probes := probes || format('SELECT * FROM dblink(%L, %L) AS d(%s)', 'pgfleet_' || sh.node,
            format('SELECT %s FROM %I.%I WHERE %s GROUP BY %s HAVING count(*) > 1 ORDER BY %s LIMIT 1',
                   cols, sh.shard_schema, sh.shard_table, kept, cols, cols), typed);
    END LOOP;
    IF cardinality(probes) > 0 THEN
        EXECUTE format('SELECT %s FROM (%s) AS d ORDER BY %s LIMIT 1',
                       (SELECT string_agg(format('coalesce(%I::text, ''null'')', x), ' || '', '' || ') FROM unnest(p_columns) x),
                       array_to_string(probes, ' UNION ALL '), cols) INTO found;
    END IF;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'could not create unique index "%"', p_name USING ERRCODE = 'unique_violation',
            DETAIL = format('Key (%s)=(%s) is duplicated.', array_to_string(p_columns, ', '), found);
    END IF;
    IF p_primary THEN
        FOREACH c IN ARRAY p_columns LOOP
            FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_id LOOP
                SELECT d.f INTO found FROM dblink('pgfleet_' || sh.node, format('SELECT 1 FROM %I.%I WHERE %I IS NULL LIMIT 1',
                                                                                  sh.shard_schema, sh.shard_table, c)) AS d(f int);
                IF found IS NOT NULL THEN
                    RAISE EXCEPTION 'column "%" of relation "%" contains null values', c,
                        (SELECT relname FROM pg_class WHERE oid = p_table) USING ERRCODE = 'not_null_violation';
                END IF;
            END LOOP;
        END LOOP;
    END IF;
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_id LOOP
        INSERT INTO pgfleet.ddl_queue (node, statement, flush)
        VALUES (sh.node, format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s%s (%s) %s', sh.shard_schema, sh.shard_table,
                                pgfleet.shard_object_name(p_name, sh.shard_id),
                                CASE WHEN p_primary THEN 'PRIMARY KEY' ELSE 'UNIQUE' END,
                                CASE WHEN nulls_not_distinct THEN ' NULLS NOT DISTINCT' ELSE '' END,
                                (SELECT string_agg(format('%I', x), ', ') FROM unnest(p_columns) x), upper(deferral)),
                NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id()));
    END LOOP;
END $$;

-- A constraint of a distributed table that only its shards hold (a primary key or unique constraint), dropped
-- on every shard at COMMIT.
CREATE OR REPLACE FUNCTION pgfleet.drop_unique_constraint(p_table regclass, p_name text, p_missing_ok bool DEFAULT false,
                                                          p_cascade bool DEFAULT false)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    sh pgfleet.shards;
    method text := (SELECT t.method FROM pgfleet.tables t WHERE t.relid = p_table);
BEGIN
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = p_table), 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table %', p_table USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF method IS NULL OR method NOT IN ('hash', 'range', 'list') THEN
        RAISE EXCEPTION '% is not a distributed table', p_table USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'on plain and reference tables use ALTER TABLE … DROP CONSTRAINT';
    END IF;
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_id LOOP
        INSERT INTO pgfleet.ddl_queue (node, statement, flush)
        VALUES (sh.node, format('ALTER TABLE %I.%I DROP CONSTRAINT %s%I %s', sh.shard_schema, sh.shard_table,
                                CASE WHEN p_missing_ok THEN 'IF EXISTS ' ELSE '' END,
                                pgfleet.shard_object_name(p_name, sh.shard_id),
                                CASE WHEN p_cascade THEN 'CASCADE' ELSE 'RESTRICT' END),
                NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id()));
    END LOOP;
END $$;
