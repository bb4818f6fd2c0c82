-- Foreign keys of distributed tables, enforced on the workers shard by shard. Installed after grants.sql
-- by Fleet.install_catalog(). Static SQL; idempotent.
--
-- The coordinator cannot hold them: a foreign key on the partitioned parent is refused ("foreign key
-- constraints are not supported on foreign tables"), and a distributed table cannot be referenced (its
-- unique constraints live on the shards: "there is no unique constraint matching given keys"). So each
-- shard table gets the key, pointing at what holds the referenced rows on the same worker:
-- * a reference table: its copy on that worker;
-- * a distributed table co-located with it, when the key pairs the two distribution keys: the shard
--   of the same index (co-located shards share their node).
-- Anything else cannot be enforced per shard and is refused, saying what would make it work. A
-- reference table keeps its foreign keys on the coordinator, where all of its writes happen, and may be
-- referenced by plain coordinator tables.
-- Declared: present on a plain table when it is distributed (adopted from pg_constraint), or after
-- distribution with pgfleet.add_foreign_key() (plain ALTER TABLE … ADD FOREIGN KEY fails in PostgreSQL
-- before any event trigger sees it). pgfleet.foreign_keys remembers them (undistribute puts them back).

CREATE TABLE IF NOT EXISTS pgfleet.foreign_keys (
    relid       oid  NOT NULL REFERENCES pgfleet.tables ON DELETE CASCADE,
    name        text NOT NULL,
    columns     text[] NOT NULL,
    ref_relid   oid  NOT NULL,
    ref_columns text[] NOT NULL,
    on_delete   text NOT NULL DEFAULT 'NO ACTION',
    on_update   text NOT NULL DEFAULT 'NO ACTION',
    PRIMARY KEY (relid, name)
);
-- NOT DEFERRABLE, DEFERRABLE INITIALLY IMMEDIATE or DEFERRABLE INITIALLY DEFERRED (Django's keys are the
-- last): the shards' keys carry it, so a transaction may insert an item before its order as on one server
ALTER TABLE pgfleet.foreign_keys ADD COLUMN IF NOT EXISTS deferral text NOT NULL DEFAULT 'NOT DEFERRABLE';

-- The foreign keys pg_constraint has for p_relid, as pgfleet.foreign_keys rows.
CREATE OR REPLACE FUNCTION pgfleet.foreign_keys_of(p_relid oid) RETURNS SETOF pgfleet.foreign_keys
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    SELECT p_relid, c.conname::text,
           ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
           c.confrelid,
           ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                 JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i),
           CASE c.confdeltype WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL'
                              WHEN 'd' THEN 'SET DEFAULT' ELSE 'NO ACTION' END,
           CASE c.confupdtype WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL'
                              WHEN 'd' THEN 'SET DEFAULT' ELSE 'NO ACTION' END,
           CASE WHEN NOT c.condeferrable THEN 'NOT DEFERRABLE' WHEN c.condeferred THEN 'DEFERRABLE INITIALLY DEFERRED'
                ELSE 'DEFERRABLE INITIALLY IMMEDIATE' END
    FROM pg_constraint c WHERE c.conrelid = p_relid AND c.contype = 'f' ORDER BY c.conname
$$;

-- Refuse a foreign key of p_relid (distributed by p_key in co-location group p_colocation, or about to
-- be) that cannot be enforced shard by shard, naming what would make it work.
CREATE OR REPLACE FUNCTION pgfleet.check_foreign_key(p_relid oid, p_key text, p_colocation int, fk pgfleet.foreign_keys)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    ref pgfleet.tables;
    name text := p_relid::regclass::text;
    ref_name text := fk.ref_relid::regclass::text;
    paired text;
BEGIN
    IF fk.on_delete NOT IN ('NO ACTION', 'RESTRICT', 'CASCADE', 'SET NULL', 'SET DEFAULT')
       OR fk.on_update NOT IN ('NO ACTION', 'RESTRICT', 'CASCADE', 'SET NULL', 'SET DEFAULT') THEN
        RAISE EXCEPTION 'unknown foreign key action % / %', fk.on_delete, fk.on_update USING ERRCODE = 'invalid_parameter_value',
            HINT = 'use NO ACTION, RESTRICT, CASCADE, SET NULL or SET DEFAULT';
    END IF;
    IF fk.deferral NOT IN ('NOT DEFERRABLE', 'DEFERRABLE INITIALLY IMMEDIATE', 'DEFERRABLE INITIALLY DEFERRED') THEN
        RAISE EXCEPTION 'unknown foreign key deferral %', fk.deferral USING ERRCODE = 'invalid_parameter_value',
            HINT = 'use NOT DEFERRABLE, DEFERRABLE INITIALLY IMMEDIATE or DEFERRABLE INITIALLY DEFERRED';
    END IF;
    IF cardinality(fk.columns) <> cardinality(fk.ref_columns) OR cardinality(fk.columns) = 0 THEN
        RAISE EXCEPTION 'foreign key % of % needs as many columns as it references', fk.name, name
            USING ERRCODE = 'invalid_foreign_key', HINT = 'name the columns on both sides, in pairs';
    END IF;
    SELECT * INTO ref FROM pgfleet.tables WHERE relid = fk.ref_relid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'foreign key % of % references %, whose rows are only on the coordinator', fk.name, name, ref_name
            USING ERRCODE = 'feature_not_supported',
                  HINT = format('make %s a reference table first (pgfleet reference %s), or distribute it and co-locate %s with it',
                                ref_name, ref_name, name);
    ELSIF ref.method = 'reference' THEN
        RETURN;
    ELSIF ref.colocation_id IS DISTINCT FROM p_colocation THEN
        RAISE EXCEPTION 'foreign key % of % references %, which is not co-located with it', fk.name, name, ref_name
            USING ERRCODE = 'feature_not_supported',
                  HINT = format('distribute %s co-located with %s (--colocate-with %s), or make %s a reference table',
                                name, ref_name, ref_name, ref_name);
    END IF;
    paired := fk.columns[array_position(fk.ref_columns, ref.key_column)];
    IF paired IS DISTINCT FROM p_key THEN
        RAISE EXCEPTION 'foreign key % of % does not pair its distribution key % with the distribution key % of %',
            fk.name, name, p_key, ref.key_column, ref_name USING ERRCODE = 'feature_not_supported',
            HINT = format('include %I referencing %I: only then does every row find its referenced row on its own shard',
                          p_key, ref.key_column);
    END IF;
END $$;

-- The statement that puts foreign key fk on shard sh (on sh's worker), or drops it (p_drop).
CREATE OR REPLACE FUNCTION pgfleet.foreign_key_sql(fk pgfleet.foreign_keys, sh pgfleet.shards, p_drop bool)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    SELECT CASE WHEN p_drop THEN
               format('ALTER TABLE %I.%I DROP CONSTRAINT IF EXISTS %I', sh.shard_schema, sh.shard_table,
                      pgfleet.shard_object_name(fk.name, sh.shard_id))
           ELSE
               format('ALTER TABLE %I.%I ADD CONSTRAINT %I FOREIGN KEY (%s) REFERENCES %I.%I (%s) ON DELETE %s ON UPDATE %s %s',
                      sh.shard_schema, sh.shard_table, pgfleet.shard_object_name(fk.name, sh.shard_id),
                      (SELECT string_agg(format('%I', c), ', ') FROM unnest(fk.columns) c),
                      target.shard_schema, target.shard_table,
                      (SELECT string_agg(format('%I', c), ', ') FROM unnest(fk.ref_columns) c),
                      fk.on_delete, fk.on_update, fk.deferral)
           END
    FROM (SELECT NULL) AS one
    LEFT JOIN LATERAL (
        SELECT r.shard_schema, r.shard_table FROM pgfleet.shards r JOIN pgfleet.tables t ON t.relid = r.relid
        WHERE r.relid = fk.ref_relid AND r.node = sh.node AND (t.method = 'reference' OR r.shard_index = sh.shard_index)
        LIMIT 1) target ON true
$$;

-- Record fk on distributed table fk.relid and queue it for every shard (applied at COMMIT, two-phase).
CREATE OR REPLACE FUNCTION pgfleet.enforce_foreign_key(fk pgfleet.foreign_keys) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    t pgfleet.tables;
    sh pgfleet.shards;
BEGIN
    SELECT * INTO STRICT t FROM pgfleet.tables WHERE relid = fk.relid;
    PERFORM pgfleet.check_foreign_key(fk.relid, t.key_column, t.colocation_id, fk);
    INSERT INTO pgfleet.foreign_keys SELECT fk.*;
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = fk.relid ORDER BY shard_id LOOP
        INSERT INTO pgfleet.ddl_queue (node, statement, flush)
        VALUES (sh.node, pgfleet.foreign_key_sql(fk, sh, false),
                NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id()));
    END LOOP;
END $$;

-- The SQL API: a foreign key of a distributed table, after distribution, by its owner (who needs the
-- REFERENCES privilege on the referenced table, as for ALTER TABLE … ADD FOREIGN KEY).
DROP FUNCTION IF EXISTS pgfleet.add_foreign_key(regclass, text, text[], regclass, text[], text, text);  -- before deferral
CREATE OR REPLACE FUNCTION pgfleet.add_foreign_key(p_table regclass, p_name text, p_columns text[],
                                                   p_references regclass, p_ref_columns text[],
                                                   on_delete text DEFAULT 'NO ACTION', on_update text DEFAULT 'NO ACTION',
                                                   deferral text DEFAULT 'NOT DEFERRABLE')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    method text := (SELECT t.method FROM pgfleet.tables t WHERE t.relid = p_table);
BEGIN
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = p_table), 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table % to add a foreign key to it', p_table USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- as ALTER TABLE … ADD FOREIGN KEY: no referenced columns means the referenced table's primary key,
    -- no name means <table>_<columns>_fkey (PostgreSQL's choice, without its truncation and numbering)
    IF p_ref_columns IS NULL THEN
        p_ref_columns := ARRAY(SELECT a.attname::text FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(n, i)
                               JOIN pg_attribute a ON a.attnum = k.n
                               WHERE c.conrelid = p_references AND c.contype = 'p' AND a.attrelid = p_references
                               ORDER BY k.i);
        IF cardinality(p_ref_columns) = 0 THEN
            RAISE EXCEPTION 'there is no primary key for referenced table %', p_references
                USING ERRCODE = 'invalid_foreign_key',
                      HINT = 'name the referenced columns: REFERENCES table (columns) (a distributed table''s keys are on its shards)';
        END IF;
    END IF;
    p_name := coalesce(p_name, format('%s_%s_fkey', (SELECT relname FROM pg_class WHERE oid = p_table),
                                      array_to_string(p_columns, '_')));
    IF NOT has_table_privilege(session_user, p_references, 'REFERENCES') THEN
        RAISE EXCEPTION 'permission denied for table %', p_references USING ERRCODE = 'insufficient_privilege',
            HINT = format('the owner of %s needs the REFERENCES privilege on it', p_references);
    END IF;
    IF method IS DISTINCT FROM 'hash' AND method IS DISTINCT FROM 'range' AND method IS DISTINCT FROM 'list' THEN
        RAISE EXCEPTION '% is not a distributed table', p_table USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'on plain and reference tables use ALTER TABLE … ADD FOREIGN KEY';
    END IF;
    IF EXISTS (SELECT FROM pgfleet.foreign_keys f WHERE f.relid = p_table AND f.name = p_name) THEN
        RAISE EXCEPTION 'constraint "%" for relation % already exists', p_name, p_table USING ERRCODE = 'duplicate_object';
    END IF;
    PERFORM pgfleet.enforce_foreign_key(ROW(p_table, p_name, p_columns, p_references, p_ref_columns,
                                            upper(on_delete), upper(on_update), upper(deferral))::pgfleet.foreign_keys);
END $$;

CREATE OR REPLACE FUNCTION pgfleet.drop_foreign_key(p_table regclass, p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    fk pgfleet.foreign_keys;
    sh pgfleet.shards;
BEGIN
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = p_table), 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table % to drop its foreign key', p_table USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM pgfleet.foreign_keys f WHERE f.relid = p_table AND f.name = p_name RETURNING * INTO fk;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'constraint "%" of relation % does not exist', p_name, p_table USING ERRCODE = 'undefined_object';
    END IF;
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_id LOOP
        INSERT INTO pgfleet.ddl_queue (node, statement, flush)
        VALUES (sh.node, pgfleet.foreign_key_sql(fk, sh, true),
                NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id()));
    END LOOP;
END $$;

-- Plain ALTER TABLE t DROP CONSTRAINT n through the router (router/ddl.py): a foreign key of a distributed
-- table that only its shards hold goes with drop_foreign_key; a constraint the coordinator's table does not
-- have, of a distributed table, is a primary key or unique constraint of its shards (unique_keys.sql); any
-- other constraint is the table's own, dropped by the same statement run with the caller's rights.
CREATE OR REPLACE FUNCTION pgfleet.drop_constraint(p_table regclass, p_name text, p_missing_ok bool, p_cascade bool)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
BEGIN
    IF EXISTS (SELECT FROM pgfleet.foreign_keys f WHERE f.relid = p_table AND f.name = p_name) THEN
        PERFORM pgfleet.drop_foreign_key(p_table, p_name);
    ELSIF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = p_table AND conname = p_name)
            AND (SELECT method FROM pgfleet.tables WHERE relid = p_table) IN ('hash', 'range', 'list') THEN
        PERFORM pgfleet.drop_unique_constraint(p_table, p_name, p_missing_ok, p_cascade);
    ELSE
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %s%I %s', p_table,
                       CASE WHEN p_missing_ok THEN 'IF EXISTS ' ELSE '' END, p_name,
                       CASE WHEN p_cascade THEN 'CASCADE' ELSE 'RESTRICT' END);
    END IF;
END $$;

-- Undistribute: the foreign keys of p_old (the distributed table) on p_new (the plain table taking its
-- place); those referencing another distributed table cannot be, and are reported.
CREATE OR REPLACE FUNCTION pgfleet.restore_foreign_keys(p_old oid, p_new oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    fk pgfleet.foreign_keys;
BEGIN
    FOR fk IN SELECT * FROM pgfleet.foreign_keys WHERE relid = p_old ORDER BY name LOOP
        IF (SELECT method FROM pgfleet.tables WHERE relid = fk.ref_relid) = 'reference' THEN
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%s) REFERENCES %s (%s) ON DELETE %s ON UPDATE %s %s',
                           p_new::regclass, fk.name, (SELECT string_agg(format('%I', c), ', ') FROM unnest(fk.columns) c),
                           fk.ref_relid::regclass, (SELECT string_agg(format('%I', c), ', ') FROM unnest(fk.ref_columns) c),
                           fk.on_delete, fk.on_update, fk.deferral);
        ELSE
            RAISE WARNING 'foreign key % of % references distributed table %, so the plain table cannot keep it',
                fk.name, p_new::regclass, fk.ref_relid::regclass;
        END IF;
    END LOOP;
END $$;

-- Undistribute refuses a table that distributed tables' foreign keys reference: their shards' keys
-- point at its shards or copies, which would go.
CREATE OR REPLACE FUNCTION pgfleet.check_not_referenced(p_relid oid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    fk pgfleet.foreign_keys;
BEGIN
    SELECT * INTO fk FROM pgfleet.foreign_keys WHERE ref_relid = p_relid AND relid <> p_relid ORDER BY relid, name LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'foreign key % of % references %', fk.name, fk.relid::regclass, p_relid::regclass
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = format('drop it first: SELECT pgfleet.drop_foreign_key(%L, %L)', fk.relid::regclass::text, fk.name);
    END IF;
END $$;
