-- pgfleet catalog, installed on the coordinator by `pgfleet up` / Fleet.install_catalog(), followed by
-- worker_writes.sql (the reference-table triggers and flush_queue(), which applies the queue at COMMIT).
-- Static SQL: no user input is interpolated here. Idempotent.
CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE SCHEMA IF NOT EXISTS pgfleet;
CREATE SCHEMA IF NOT EXISTS pgfleet_shards;
COMMENT ON SCHEMA pgfleet IS 'pgfleet catalog: the topology of this cluster (source of truth)';
COMMENT ON SCHEMA pgfleet_shards IS 'pgfleet: foreign tables that point at shards and reference copies on the workers';

CREATE TABLE IF NOT EXISTS pgfleet.meta (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE IF NOT EXISTS pgfleet.nodes (
    name      text PRIMARY KEY,
    role      text NOT NULL CHECK (role IN ('coordinator', 'worker')),
    host      text NOT NULL,
    port      int  NOT NULL,
    dbname    text NOT NULL,
    username  text NOT NULL,
    kind      text NOT NULL DEFAULT 'local' CHECK (kind IN ('local', 'external')),
    added_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pgfleet.colocation_groups (
    id          serial PRIMARY KEY,
    method      text NOT NULL,
    key_type    text NOT NULL,
    shard_count int  NOT NULL
);

CREATE TABLE IF NOT EXISTS pgfleet.tables (
    relid         oid PRIMARY KEY,
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    method        text NOT NULL CHECK (method IN ('hash', 'range', 'list', 'reference')),
    key_column    text,
    colocation_id int REFERENCES pgfleet.colocation_groups (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The owner and privileges the shards were given (grants.sql: acl_signature); NULL before they were.
ALTER TABLE pgfleet.tables ADD COLUMN IF NOT EXISTS acl_signature text;

CREATE SEQUENCE IF NOT EXISTS pgfleet.shard_id_seq START 102000;

CREATE TABLE IF NOT EXISTS pgfleet.shards (
    shard_id       bigint PRIMARY KEY,
    relid          oid  NOT NULL REFERENCES pgfleet.tables ON DELETE CASCADE,
    shard_index    int  NOT NULL,
    node           text NOT NULL REFERENCES pgfleet.nodes (name),
    shard_schema   text NOT NULL,
    shard_table    text NOT NULL,
    foreign_schema text NOT NULL,
    foreign_table  text NOT NULL,
    modulus        int,
    remainder      int,
    lower_bound    text,
    upper_bound    text,
    list_values    text[],
    UNIQUE (relid, shard_index, node)
);

-- Column snapshot of each distributed/reference table: the DDL trigger diffs pg_attribute against it.
CREATE TABLE IF NOT EXISTS pgfleet.columns (
    relid    oid  NOT NULL REFERENCES pgfleet.tables ON DELETE CASCADE,
    attnum   int  NOT NULL,
    name     text NOT NULL,
    type     text NOT NULL,
    not_null bool NOT NULL,
    def      text,
    PRIMARY KEY (relid, attnum)
);

-- How each reference table's rows travel to its copies (codec_of()), written by snapshot_columns()
-- whenever the table's columns are snapshot.
CREATE TABLE IF NOT EXISTS pgfleet.row_codecs (
    relid     oid  NOT NULL REFERENCES pgfleet.tables ON DELETE CASCADE,
    keys_only bool NOT NULL,
    texts     text,  -- NULL when there is no such column (keys_only and no primary key)
    names     text,
    casts     text,
    match     text,
    PRIMARY KEY (relid, keys_only)
);

CREATE TABLE IF NOT EXISTS pgfleet.indexes (
    indexrelid oid PRIMARY KEY,
    relid      oid  NOT NULL REFERENCES pgfleet.tables ON DELETE CASCADE,
    index_name text NOT NULL
);

-- Statements for the workers, queued inside the writer's transaction by the DDL triggers and the
-- reference-table triggers, and run at COMMIT (two-phase) by flush_queue(). A rolled-back transaction
-- (or savepoint) takes its rows with it.
CREATE TABLE IF NOT EXISTS pgfleet.ddl_queue (
    id        bigserial PRIMARY KEY,
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    node      text NOT NULL,
    statement text NOT NULL
);
-- Only a transaction's first queued row (flush) fires flush_queue(), which applies all of them.
ALTER TABLE pgfleet.ddl_queue ADD COLUMN IF NOT EXISTS flush bool NOT NULL DEFAULT true;
-- A reference-table write runs on the workers as EXECUTE <prepared>(rows); prepare is the PREPARE
-- statement flush_queue() sends first on a link that has not prepared that name yet.
ALTER TABLE pgfleet.ddl_queue ADD COLUMN IF NOT EXISTS prepared text;
ALTER TABLE pgfleet.ddl_queue ADD COLUMN IF NOT EXISTS prepare text;
-- The rows of such a statement (its parameter) once more, as a value: the router applies a reference
-- write's queued statements to the copies inside its own transaction (router/refcopies.py), binding them.
ALTER TABLE pgfleet.ddl_queue ADD COLUMN IF NOT EXISTS rows jsonb;
CREATE INDEX IF NOT EXISTS ddl_queue_xid ON pgfleet.ddl_queue (xid);
COMMENT ON TABLE pgfleet.ddl_queue IS
    'pgfleet: statements for the workers (DDL and reference-table writes), applied at COMMIT by flush_queue()';

-- Sessions keep their dblink connections to the workers open (flush_queue), connected as the catalog
-- owner: only roles granted dblink may use dblink on the coordinator, so no one can borrow them.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT d.objid::regprocedure FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
             WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
               AND d.deptype = 'e' AND e.extname = 'dblink' LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;

-- Two-phase commits over several nodes (the router's multi-node transactions). Prepared transactions
-- on the workers are named 'pgfleet_…' (gid). The decision for a gid is the committed row here:
-- outcome 'commit' is written by the transaction's owner after every participant PREPAREd and before
-- any COMMIT PREPARED; recovery, finding a prepared pgfleet gid with no row, inserts outcome 'abort'
-- with ON CONFLICT DO NOTHING (which waits for an owner's decision in flight), so a late owner's
-- decision fails on the primary key instead of half-committing. Recovery then commits or rolls back
-- the prepared transactions by the row, and deletes rows whose gid is prepared nowhere.
-- A backup takes this table in EXCLUSIVE mode while it creates the restore point on every node, so
-- no commit decision falls between the nodes' points.
CREATE TABLE IF NOT EXISTS pgfleet.commit_decisions (
    gid        text PRIMARY KEY,
    outcome    text NOT NULL DEFAULT 'commit' CHECK (outcome IN ('commit', 'abort')),
    nodes      text[] NOT NULL DEFAULT '{}',
    decided_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgfleet.commit_decisions IS
    'pgfleet: durable decisions of multi-node two-phase commits, kept until every node has applied them';

-- Long operations (distribute, reference): a row per attempt, so that an interrupted one is visible
-- and its leftovers can be removed.
CREATE TABLE IF NOT EXISTS pgfleet.operations (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    relid       oid,
    table_name  text NOT NULL,
    state       text NOT NULL DEFAULT 'running',
    detail      jsonb NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- ---------------------------------------------------------------------------------------------
-- DDL propagation. ddl_command_end: diff the table's columns against the snapshot and queue the
-- worker statements; sql_drop: queue the drops. flush_queue() (worker_writes.sql) runs the queue at COMMIT with a
-- two-phase commit over all workers involved: any failure aborts the coordinator's transaction too.
CREATE OR REPLACE FUNCTION pgfleet.column_actions(p_relid oid) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    s record;
    a record;
    def text;
BEGIN
    FOR s IN SELECT c.attnum, c.name, c.type, c.not_null, c.def, att.attname, att.attisdropped,
                    format_type(att.atttypid, att.atttypmod) AS newtype, att.attnotnull,
                    pg_get_expr(ad.adbin, ad.adrelid) AS newdef
             FROM pgfleet.columns c
             LEFT JOIN pg_attribute att ON att.attrelid = c.relid AND att.attnum = c.attnum
             LEFT JOIN pg_attrdef ad ON ad.adrelid = c.relid AND ad.adnum = c.attnum
             WHERE c.relid = p_relid ORDER BY c.attnum LOOP
        IF s.attname IS NULL OR s.attisdropped THEN
            RETURN NEXT format('DROP COLUMN IF EXISTS %I', s.name);
            -- as on one server, a foreign key on the column goes with it (the shards' go with theirs)
            DELETE FROM pgfleet.foreign_keys f WHERE f.relid = p_relid AND s.name = ANY (f.columns);
            CONTINUE;
        END IF;
        IF s.attname <> s.name THEN
            RETURN NEXT format('RENAME COLUMN %I TO %I', s.name, s.attname);
            UPDATE pgfleet.foreign_keys f SET columns = array_replace(f.columns, s.name, s.attname::text)
            WHERE f.relid = p_relid AND s.name = ANY (f.columns);
            UPDATE pgfleet.foreign_keys f SET ref_columns = array_replace(f.ref_columns, s.name, s.attname::text)
            WHERE f.ref_relid = p_relid AND s.name = ANY (f.ref_columns);
        END IF;
        IF s.newtype <> s.type THEN
            RETURN NEXT format('ALTER COLUMN %I TYPE %s', s.attname, s.newtype);
        END IF;
        IF s.attnotnull AND NOT s.not_null THEN
            RETURN NEXT format('ALTER COLUMN %I SET NOT NULL', s.attname);
        ELSIF s.not_null AND NOT s.attnotnull THEN
            RETURN NEXT format('ALTER COLUMN %I DROP NOT NULL', s.attname);
        END IF;
        def := CASE WHEN s.newdef LIKE '%nextval(%' THEN NULL ELSE s.newdef END;
        IF def IS DISTINCT FROM s.def THEN
            IF def IS NULL THEN
                RETURN NEXT format('ALTER COLUMN %I DROP DEFAULT', s.attname);
            ELSE
                RETURN NEXT format('ALTER COLUMN %I SET DEFAULT %s', s.attname, def);
            END IF;
        END IF;
    END LOOP;
    FOR a IN SELECT att.attnum, att.attname, format_type(att.atttypid, att.atttypmod) AS type,
                    att.attnotnull, pg_get_expr(ad.adbin, ad.adrelid) AS def
             FROM pg_attribute att
             LEFT JOIN pg_attrdef ad ON ad.adrelid = att.attrelid AND ad.adnum = att.attnum
             WHERE att.attrelid = p_relid AND att.attnum > 0 AND NOT att.attisdropped
               AND NOT EXISTS (SELECT 1 FROM pgfleet.columns c WHERE c.relid = p_relid AND c.attnum = att.attnum)
             ORDER BY att.attnum LOOP
        RETURN NEXT format('ADD COLUMN %I %s%s%s', a.attname, a.type,
                           CASE WHEN a.def IS NOT NULL AND a.def NOT LIKE '%nextval(%' THEN ' DEFAULT ' || a.def ELSE '' END,
                           CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END);
    END LOOP;
    PERFORM pgfleet.snapshot_columns(p_relid);
END $$;

-- How rows of p_relid travel to its reference copies (all columns, or the primary key only): as a
-- JSON array of arrays of each value's text (NULL stays null, so a jsonb 'null' and an SQL NULL stay
-- apart), primary key columns first. texts: ARRAY[n.a::text, …] over a row n; names: a, …;
-- casts: (r->>0)::type, … over an element r; match: c.a = (r->>0)::type AND … over the key columns
-- (the same in both codecs). Used by worker_writes.sql.
CREATE OR REPLACE FUNCTION pgfleet.codec_of(p_relid oid, p_keys_only bool) RETURNS pgfleet.row_codecs
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    WITH cols AS (
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, k.ord IS NOT NULL AS is_key,
               row_number() OVER (ORDER BY k.ord NULLS LAST, a.attnum) - 1 AS pos
        FROM pg_attribute a
        LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
        LEFT JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON k.attnum = a.attnum
        WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped AND (k.ord IS NOT NULL OR NOT p_keys_only))
    SELECT ROW(p_relid, p_keys_only,
           'ARRAY[' || string_agg(format('n.%I::text', attname), ', ' ORDER BY pos) || ']',
           string_agg(format('%I', attname), ', ' ORDER BY pos),
           string_agg(format('(r->>%s)::%s', pos, type), ', ' ORDER BY pos),
           string_agg(format('c.%I = (r->>%s)::%s', attname, pos, type), ' AND ' ORDER BY pos)
               FILTER (WHERE is_key))::pgfleet.row_codecs
    FROM cols
$$;

CREATE OR REPLACE FUNCTION pgfleet.snapshot_columns(p_relid oid) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
    DELETE FROM pgfleet.row_codecs WHERE relid = p_relid;
    INSERT INTO pgfleet.row_codecs
    SELECT (pgfleet.codec_of(p_relid, k)).* FROM unnest(ARRAY[true, false]) AS k
    WHERE EXISTS (SELECT FROM pgfleet.tables WHERE relid = p_relid AND method = 'reference');
    DELETE FROM pgfleet.columns WHERE relid = p_relid;
    INSERT INTO pgfleet.columns (relid, attnum, name, type, not_null, def)
    SELECT att.attrelid, att.attnum, att.attname, format_type(att.atttypid, att.atttypmod), att.attnotnull,
           CASE WHEN pg_get_expr(ad.adbin, ad.adrelid) LIKE '%nextval(%' THEN NULL
                ELSE pg_get_expr(ad.adbin, ad.adrelid) END
    FROM pg_attribute att
    LEFT JOIN pg_attrdef ad ON ad.adrelid = att.attrelid AND ad.adnum = att.attnum
    WHERE att.attrelid = p_relid AND att.attnum > 0 AND NOT att.attisdropped;
$$;

-- name || '_' || shard id within NAMEDATALEN-1 = 63 bytes; a longer name keeps whole characters and gets
-- 8 hex digits of its md5 before the suffix, so distinct names stay distinct. Same as shard_object_name
-- in plan/tables.py (the tests compare them).
CREATE OR REPLACE FUNCTION pgfleet.shard_object_name(p_name text, p_shard_id bigint)
RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    suffix text := '_' || p_shard_id;
    tag text := '_' || left(md5(p_name), 8);
    base text := p_name;
BEGIN
    IF octet_length(p_name) + octet_length(suffix) <= 63 THEN
        RETURN p_name || suffix;
    END IF;
    WHILE octet_length(base) > 63 - octet_length(suffix) - octet_length(tag) LOOP
        base := left(base, -1);
    END LOOP;
    RETURN base || tag || suffix;
END $$;

CREATE OR REPLACE FUNCTION pgfleet.shard_index_name(p_index text, p_shard_id bigint, p_method text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_method = 'reference' THEN p_index ELSE pgfleet.shard_object_name(p_index, p_shard_id) END
$$;

-- Every role reaches the workers through one user mapping FOR PUBLIC per worker server, with the user
-- of pgfleet's own mapping and password_required 'false' (only a superuser may set it): the password
-- stays in the server's passfile, which postgres_fdw reads for a non-superuser only so. Privileges stay
-- the coordinator's: a query through a distributed table is checked there (table and column privileges,
-- row-level security of the parent), and the mapping is usable only through foreign tables, which live in
-- pgfleet_shards (no USAGE for PUBLIC). No role gets USAGE on the servers, so none can create its own
-- foreign table, IMPORT FOREIGN SCHEMA or open a dblink link through them (dblink is revoked too).
-- Idempotent; called at install, by Fleet.add_node and by align_owners.
CREATE OR REPLACE FUNCTION pgfleet.ensure_public_mappings() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    srv record;
BEGIN
    FOR srv IN SELECT fs.srvname, um.umoptions
               FROM pg_foreign_server fs
               JOIN pg_foreign_data_wrapper w ON w.oid = fs.srvfdw AND w.fdwname = 'postgres_fdw'
               JOIN pg_user_mapping um ON um.umserver = fs.oid
                                      AND um.umuser = (SELECT oid FROM pg_roles WHERE rolname = current_user)
               WHERE fs.srvname LIKE 'pgfleet\_%'
                 AND NOT EXISTS (SELECT FROM pg_user_mapping m WHERE m.umserver = fs.oid AND m.umuser = 0) LOOP
        EXECUTE format('CREATE USER MAPPING FOR PUBLIC SERVER %I OPTIONS (%s)', srv.srvname,
                       concat_ws(', ', (SELECT string_agg(format('%I %L', split_part(o, '=', 1), substr(o, strpos(o, '=') + 1)), ', ')
                                        FROM unnest(srv.umoptions) AS o
                                        WHERE o NOT LIKE 'password\_required=%' AND o NOT LIKE 'password=%'),
                                 'password_required ''false'''));
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION pgfleet.ensure_public_mappings() FROM PUBLIC;
SELECT pgfleet.ensure_public_mappings();

-- The coordinator's foreign tables of a table's shards belong to the table's owner: ALTER TABLE on a
-- partitioned table recurses into its partitions and checks ownership of each, so the owner of a
-- distributed table can change it as on one server. postgres_fdw reaches a worker through the mapping
-- FOR PUBLIC above (owners in clusters made by older versions may still have their own, made the same
-- way). The owner gets no USAGE on the servers and none on pgfleet_shards. Called after
-- distribute/reference and by the DDL trigger (ALTER TABLE … OWNER TO).
CREATE OR REPLACE FUNCTION pgfleet.align_owners(p_relid oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    ft record;
    internal text := coalesce(current_setting('pgfleet.internal', true), '');
BEGIN
    PERFORM pgfleet.ensure_public_mappings();
    FOR ft IN SELECT s.foreign_schema, s.foreign_table, r.rolname
              FROM pgfleet.shards s
              JOIN pg_class t ON t.oid = s.relid
              JOIN pg_roles r ON r.oid = t.relowner
              JOIN pg_namespace n ON n.nspname = s.foreign_schema
              JOIN pg_class f ON f.relnamespace = n.oid AND f.relname = s.foreign_table
              WHERE s.relid = p_relid AND f.relowner <> t.relowner LOOP
        PERFORM set_config('pgfleet.internal', 'on', true);
        EXECUTE format('ALTER FOREIGN TABLE %I.%I OWNER TO %I', ft.foreign_schema, ft.foreign_table, ft.rolname);
        PERFORM set_config('pgfleet.internal', internal, true);
    END LOOP;
END $$;

-- DDL reaches the workers through the mapped account, usually a superuser there. A new or changed
-- column default runs on the workers (ADD COLUMN evaluates it for every row), so for a role that is not
-- a superuser it may only call functions that role may execute, and no volatile one (pg_terminate_backend
-- runs as whoever calls it) except the random and clock functions of pg_catalog: what the role could not
-- do on the coordinator it cannot do on a worker.
CREATE OR REPLACE FUNCTION pgfleet.check_defaults(p_relid oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    bad record;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RETURN;
    END IF;
    SELECT a.attname, p.oid::regprocedure AS func, p.provolatile INTO bad
    FROM pg_attrdef ad
    JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
    -- functions and operators' functions of the expression tree (pg_depend omits the built-in ones)
    CROSS JOIN LATERAL regexp_matches(ad.adbin::text, ':(?:func|opfunc)id (\d+)', 'g') AS f(m)
    JOIN pg_proc p ON p.oid = f.m[1]::oid
    LEFT JOIN pgfleet.columns c ON c.relid = ad.adrelid AND c.attnum = ad.adnum
    WHERE ad.adrelid = p_relid
      AND pg_get_expr(ad.adbin, ad.adrelid) NOT LIKE '%nextval(%'
      AND pg_get_expr(ad.adbin, ad.adrelid) IS DISTINCT FROM c.def
      AND (NOT has_function_privilege(session_user, p.oid, 'EXECUTE')
           OR (p.provolatile = 'v' AND NOT (p.pronamespace = 'pg_catalog'::regnamespace AND p.proname IN
               ('gen_random_uuid', 'uuidv4', 'uuidv7', 'random', 'random_normal', 'clock_timestamp', 'timeofday'))))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgfleet: the default of column % calls %, which % on the workers',
            bad.attname, bad.func,
            CASE WHEN bad.provolatile = 'v' THEN 'is volatile and would run as pgfleet''s account'
                 ELSE 'role ' || session_user || ' may not execute' END
            USING HINT = 'Use a constant or stable default, or let a superuser run this statement.';
    END IF;
END $$;

-- The shards' (and a reference table's foreign tables') side of the column changes of p_relid since its
-- snapshot: after ALTER TABLE, and after a drop that took columns with it (DROP TYPE … CASCADE).
CREATE OR REPLACE FUNCTION pgfleet.queue_column_changes(p_relid oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    method text := (SELECT t.method FROM pgfleet.tables t WHERE t.relid = p_relid);
    acts text[] := ARRAY(SELECT * FROM pgfleet.column_actions(p_relid));
    act text;
    node text;
    sh record;
    internal text := coalesce(current_setting('pgfleet.internal', true), '');
BEGIN
    IF cardinality(acts) > 0 THEN  -- a new column's type first (types.sql)
        FOR node IN SELECT DISTINCT s.node FROM pgfleet.shards s WHERE s.relid = p_relid ORDER BY 1 LOOP
            PERFORM pgfleet.queue_types(p_relid, node);
        END LOOP;
    END IF;
    FOREACH act IN ARRAY acts LOOP
        FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_relid ORDER BY shard_id LOOP
            INSERT INTO pgfleet.ddl_queue (node, statement)
            VALUES (sh.node, format('ALTER TABLE %I.%I %s', sh.shard_schema, sh.shard_table, act));
            IF method = 'reference' THEN
                PERFORM set_config('pgfleet.internal', 'on', true);
                EXECUTE format('ALTER FOREIGN TABLE %I.%I %s', sh.foreign_schema, sh.foreign_table, act);
                PERFORM set_config('pgfleet.internal', internal, true);
            END IF;
        END LOOP;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION pgfleet.on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    cmd record;
    t record;
    sh record;
    ix record;
    tbl oid;
    tail text;
    new_name text;
BEGIN
    IF coalesce(current_setting('pgfleet.internal', true), '') = 'on' THEN
        RETURN;
    END IF;
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        IF cmd.command_tag IN ('ALTER INDEX', 'ALTER TABLE') AND cmd.classid = 'pg_class'::regclass
           AND EXISTS (SELECT FROM pgfleet.indexes WHERE indexrelid = cmd.objid) THEN
            -- ALTER INDEX … RENAME (also spelled ALTER TABLE … RENAME): the shards' indexes follow
            SELECT i.*, t2.method INTO ix FROM pgfleet.indexes i JOIN pgfleet.tables t2 USING (relid)
            WHERE i.indexrelid = cmd.objid;
            new_name := (SELECT relname FROM pg_class WHERE oid = cmd.objid);
            CONTINUE WHEN new_name = ix.index_name;
            FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = ix.relid ORDER BY shard_id LOOP
                INSERT INTO pgfleet.ddl_queue (node, statement)
                VALUES (sh.node, format('ALTER INDEX IF EXISTS %I.%I RENAME TO %I', sh.shard_schema,
                                        pgfleet.shard_index_name(ix.index_name, sh.shard_id, ix.method),
                                        pgfleet.shard_index_name(new_name, sh.shard_id, ix.method)));
            END LOOP;
            UPDATE pgfleet.indexes SET index_name = new_name WHERE indexrelid = cmd.objid;
        ELSIF cmd.command_tag = 'ALTER TABLE' AND cmd.classid = 'pg_class'::regclass THEN
            SELECT * INTO t FROM pgfleet.tables WHERE relid = cmd.objid;
            CONTINUE WHEN NOT FOUND;
            UPDATE pgfleet.tables SET schema_name = n.nspname, table_name = c.relname
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = cmd.objid AND pgfleet.tables.relid = cmd.objid;
            PERFORM pgfleet.check_defaults(cmd.objid);
            PERFORM pgfleet.align_owners(cmd.objid);
            PERFORM pgfleet.queue_column_changes(cmd.objid);
        ELSIF cmd.command_tag IN ('ALTER TYPE', 'ALTER DOMAIN') AND cmd.classid = 'pg_type'::regclass THEN
            -- a carried type's name, an enum's values, a domain's default and constraints (types.sql)
            PERFORM pgfleet.queue_type_change(cmd.objid);
        ELSIF cmd.command_tag = 'ALTER TYPE' AND cmd.classid = 'pg_class'::regclass THEN
            -- a composite type, reported under its relation: its name, then its attributes (types.sql)
            PERFORM pgfleet.queue_type_change(ct.oid) FROM pg_type ct WHERE ct.typrelid = cmd.objid AND ct.typtype = 'c';
            PERFORM pgfleet.queue_attribute_changes(ct.oid) FROM pg_type ct WHERE ct.typrelid = cmd.objid AND ct.typtype = 'c';
        ELSIF cmd.command_tag = 'CREATE INDEX' THEN
            SELECT indrelid INTO tbl FROM pg_index WHERE indexrelid = cmd.objid;
            SELECT * INTO t FROM pgfleet.tables WHERE relid = tbl;
            CONTINUE WHEN NOT FOUND;
            tail := substring(pg_get_indexdef(cmd.objid) FROM ' USING .*$');
            INSERT INTO pgfleet.indexes (indexrelid, relid, index_name)
            VALUES (cmd.objid, tbl, (SELECT relname FROM pg_class WHERE oid = cmd.objid))
            ON CONFLICT DO NOTHING;
            FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = tbl ORDER BY shard_id LOOP
                INSERT INTO pgfleet.ddl_queue (node, statement)
                VALUES (sh.node, format('CREATE %sINDEX IF NOT EXISTS %I ON %I.%I%s',
                        CASE WHEN (SELECT indisunique FROM pg_index WHERE indexrelid = cmd.objid) THEN 'UNIQUE ' ELSE '' END,
                        pgfleet.shard_index_name((SELECT relname FROM pg_class WHERE oid = cmd.objid), sh.shard_id, t.method),
                        sh.shard_schema, sh.shard_table, tail));
            END LOOP;
        END IF;
    END LOOP;
    -- owners and privileges of the shards follow the coordinator's (grants.sql)
    IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands()
               WHERE command_tag IN ('GRANT', 'REVOKE', 'ALTER TABLE', 'DROP OWNED')) THEN
        PERFORM pgfleet.queue_changed_privileges();
    END IF;
END $$;

CREATE OR REPLACE FUNCTION pgfleet.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    obj record;
    t record;
    ix record;
    sh record;
BEGIN
    IF coalesce(current_setting('pgfleet.internal', true), '') = 'on' THEN
        RETURN;
    END IF;
    -- A table whose shards or copies others' shards reference (pgfleet.foreign_keys) is dropped on the
    -- workers after them: one statement may drop both (DROP TABLE a, b; DROP SCHEMA … CASCADE).
    FOR obj IN
        WITH RECURSIVE dropped AS (
            SELECT d.objid, d.object_type, d.ordinality FROM pg_event_trigger_dropped_objects() WITH ORDINALITY d
        ), managed AS (
            SELECT objid FROM dropped WHERE object_type = 'table' AND objid IN (SELECT relid FROM pgfleet.tables)
        ), chain (relid, depth) AS (
            SELECT objid, 0 FROM managed
            UNION
            SELECT f.ref_relid, c.depth + 1 FROM chain c JOIN pgfleet.foreign_keys f ON f.relid = c.relid
            WHERE f.ref_relid <> f.relid AND f.ref_relid IN (SELECT objid FROM managed) AND c.depth < 64
        )
        SELECT d.objid, d.object_type FROM dropped d
        LEFT JOIN (SELECT relid, max(depth) AS depth FROM chain GROUP BY relid) r ON r.relid = d.objid
        ORDER BY coalesce(r.depth, 0), d.ordinality
    LOOP
        IF obj.object_type = 'table' THEN
            SELECT * INTO t FROM pgfleet.tables WHERE relid = obj.objid;
            CONTINUE WHEN NOT FOUND;
            FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = obj.objid ORDER BY shard_id LOOP
                INSERT INTO pgfleet.ddl_queue (node, statement)
                VALUES (sh.node, format('DROP TABLE IF EXISTS %I.%I', sh.shard_schema, sh.shard_table));
                IF t.method = 'reference' THEN
                    PERFORM set_config('pgfleet.internal', 'on', true);
                    EXECUTE format('DROP FOREIGN TABLE IF EXISTS %I.%I', sh.foreign_schema, sh.foreign_table);
                    PERFORM set_config('pgfleet.internal', 'off', true);
                END IF;
            END LOOP;
            DELETE FROM pgfleet.tables WHERE relid = obj.objid;
        ELSIF obj.object_type IN ('type', 'domain') THEN
            PERFORM pgfleet.queue_type_drop(obj.objid);  -- a carried type (types.sql)
        ELSIF obj.object_type = 'table column' AND EXISTS (SELECT FROM pgfleet.tables WHERE relid = obj.objid)
              AND EXISTS (SELECT FROM pg_class WHERE oid = obj.objid) THEN
            PERFORM pgfleet.queue_column_changes(obj.objid);  -- dropped with a type (DROP TYPE … CASCADE)
        ELSIF obj.object_type = 'index' THEN
            SELECT i.*, t2.method INTO ix FROM pgfleet.indexes i JOIN pgfleet.tables t2 USING (relid)
            WHERE i.indexrelid = obj.objid;
            CONTINUE WHEN NOT FOUND;
            FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = ix.relid ORDER BY shard_id LOOP
                INSERT INTO pgfleet.ddl_queue (node, statement)
                VALUES (sh.node, format('DROP INDEX IF EXISTS %I.%I', sh.shard_schema,
                                        pgfleet.shard_index_name(ix.index_name, sh.shard_id, ix.method)));
            END LOOP;
            DELETE FROM pgfleet.indexes WHERE indexrelid = obj.objid;
        END IF;
    END LOOP;
END $$;

DROP EVENT TRIGGER IF EXISTS pgfleet_ddl_end;
CREATE EVENT TRIGGER pgfleet_ddl_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX', 'CREATE INDEX', 'GRANT', 'REVOKE', 'DROP OWNED', 'ALTER TYPE', 'ALTER DOMAIN')
    EXECUTE FUNCTION pgfleet.on_ddl_end();
DROP EVENT TRIGGER IF EXISTS pgfleet_sql_drop;
-- No tag filter: DROP SCHEMA … CASCADE and DROP OWNED drop tables too.
CREATE EVENT TRIGGER pgfleet_sql_drop ON sql_drop EXECUTE FUNCTION pgfleet.on_sql_drop();

INSERT INTO pgfleet.meta (key, value) VALUES ('catalog_version', '1')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
