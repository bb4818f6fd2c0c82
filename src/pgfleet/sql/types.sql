-- Types of the coordinator that distributed and reference tables use (enums, domains, composite types,
-- types of extensions), carried to the workers: their shards and copies have the same columns.
--
-- pgfleet.type_statement(type, create) is one statement for a worker, a DO block that needs nothing of
-- pgfleet there: with create, it makes the type when the worker lacks it (an extension's type: CREATE
-- EXTENSION); on a worker that has it, it brings an enum's values and a domain's default, NOT NULL and
-- CHECK constraints in line with the coordinator's (ALTER TYPE … ADD VALUE / RENAME VALUE, ALTER DOMAIN),
-- or says how they differ. Queued before the shards at distribution (distribute.py, reference.py, the SQL
-- API) and after ALTER TYPE / ALTER DOMAIN of a carried type (catalog.sql, on_ddl_end).

-- The non-built-in types the columns of p_relid use, through arrays, domains, composite types and ranges;
-- depth: how far down the dependencies a type is (create the deepest first).
CREATE OR REPLACE FUNCTION pgfleet.carried_types(p_relid oid) RETURNS TABLE (type_oid oid, depth int)
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    WITH RECURSIVE used (type_oid, depth) AS (
        SELECT a.atttypid, 0 FROM pg_attribute a WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT d.dep, u.depth + 1 FROM used u JOIN pg_type t ON t.oid = u.type_oid
        CROSS JOIN LATERAL (
            SELECT t.typelem AS dep WHERE t.typelem <> 0 AND t.typcategory = 'A'
            UNION ALL SELECT t.typbasetype WHERE t.typtype = 'd'
            UNION ALL SELECT a.atttypid FROM pg_attribute a
                      WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
            UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE t.typtype = 'r' AND r.rngtypid = t.oid
            UNION ALL SELECT r.rngtypid FROM pg_range r WHERE t.typtype = 'm' AND r.rngmultitypid = t.oid
        ) d
        WHERE u.depth < 16
    )
    SELECT u.type_oid, max(u.depth)::int FROM used u JOIN pg_type t ON t.oid = u.type_oid
    JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND NOT (t.typelem <> 0 AND t.typcategory = 'A')  -- an array type comes with its element type
    GROUP BY u.type_oid
$$;

-- Is p_type used by a distributed or reference table (so that its changes must reach the workers)?
CREATE OR REPLACE FUNCTION pgfleet.type_is_carried(p_type oid) RETURNS bool
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    SELECT EXISTS (SELECT FROM pgfleet.tables t CROSS JOIN LATERAL pgfleet.carried_types(t.relid) c
                   WHERE c.type_oid = p_type)
$$;

-- The worker statement for p_type (see the top of this file).
CREATE OR REPLACE FUNCTION pgfleet.type_statement(p_type oid, p_create bool) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    t pg_type;
    schema text;
    qname text;
    ext record;
    labels text[];
    create_type text;
    checks jsonb;
    make text;
    sync text := '';
BEGIN
    SELECT * INTO t FROM pg_type WHERE oid = p_type;
    schema := (SELECT nspname FROM pg_namespace WHERE oid = t.typnamespace);
    qname := format('%I.%I', schema, t.typname);
    SELECT e.extname, en.nspname INTO ext FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
    JOIN pg_namespace en ON en.oid = e.extnamespace
    WHERE d.classid = 'pg_type'::regclass AND d.objid = p_type AND d.refclassid = 'pg_extension'::regclass
      AND d.deptype = 'e';
    IF ext.extname IS NOT NULL THEN
        make := format($f$
        BEGIN
            EXECUTE %L;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_object', MESSAGE = %L || SQLERRM, HINT = %L;
        END;
        IF to_regtype(%L) IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_object', MESSAGE = %L, HINT = %L;
        END IF;$f$,
            format('CREATE EXTENSION IF NOT EXISTS %I WITH SCHEMA %I', ext.extname, ext.nspname),
            format('type %s comes from extension %s, which this worker cannot create: ', qname, ext.extname),
            format('install the extension on every worker (CREATE EXTENSION %I), then run again', ext.extname),
            qname,
            format('extension %s on this worker has no type %s', ext.extname, qname),
            format('create the extension in schema %s on the workers, as on the coordinator', ext.nspname));
    ELSIF t.typtype = 'e' THEN
        labels := ARRAY(SELECT enumlabel::text FROM pg_enum WHERE enumtypid = p_type ORDER BY enumsortorder);
        create_type := format('CREATE TYPE %s AS ENUM (%s)', qname,
                              (SELECT coalesce(string_agg(quote_literal(l), ', ' ORDER BY o), '')
                               FROM unnest(labels) WITH ORDINALITY x(l, o)));
        make := format('EXECUTE %L;', create_type);
        sync := format($f$
    DECLARE
        want text[] := %L;
        have text[] := ARRAY(SELECT enumlabel::text FROM pg_enum WHERE enumtypid = to_regtype(%L) ORDER BY enumsortorder);
        i int;
    BEGIN
        IF have = want THEN
            NULL;
        ELSIF %s AND cardinality(have) = cardinality(want)  -- after ALTER TYPE … RENAME VALUE
              AND NOT EXISTS (SELECT FROM unnest(have, want) x(h, w) WHERE h <> w AND (w = ANY (have) OR h = ANY (want))) THEN
            FOR i IN 1 .. cardinality(want) LOOP  -- values renamed in place
                IF have[i] <> want[i] THEN
                    EXECUTE format('ALTER TYPE %%s RENAME VALUE %%L TO %%L', %L, have[i], want[i]);
                END IF;
            END LOOP;
        ELSIF ARRAY(SELECT w FROM unnest(want) w WHERE w = ANY (have)) = have THEN
            FOR i IN 1 .. cardinality(want) LOOP  -- values added; the order of the others unchanged
                CONTINUE WHEN want[i] = ANY (have);
                IF i > 1 THEN
                    EXECUTE format('ALTER TYPE %%s ADD VALUE %%L AFTER %%L', %L, want[i], want[i - 1]);
                ELSIF cardinality(have) > 0 THEN
                    EXECUTE format('ALTER TYPE %%s ADD VALUE %%L BEFORE %%L', %L, want[i], have[1]);
                ELSE
                    EXECUTE format('ALTER TYPE %%s ADD VALUE %%L', %L, want[i]);
                END IF;
            END LOOP;
        ELSE  -- another enum of that name: replaced when nothing on the worker uses it
            BEGIN
                EXECUTE %L;
                EXECUTE %L;
            EXCEPTION WHEN dependent_objects_still_exist THEN
                RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
                    MESSAGE = format('enum %%s has the values %%s on this worker but %%s on the coordinator', %L, have, want),
                    HINT = 'make them the same (ALTER TYPE … on the worker or the coordinator), then run again';
            END;
        END IF;
    END;$f$, labels, qname, (NOT p_create)::text, qname, qname, qname, qname, format('DROP TYPE %s', qname),
            create_type, qname);
    ELSIF t.typtype = 'd' THEN
        checks := (SELECT coalesce(jsonb_object_agg(conname, pg_get_constraintdef(oid)), '{}')
                   FROM pg_constraint WHERE contypid = p_type AND contype = 'c');
        make := format('EXECUTE %L;', format('CREATE DOMAIN %s AS %s%s%s%s%s', qname, format_type(t.typbasetype, t.typtypmod),
                       CASE WHEN t.typcollation <> 0 AND t.typcollation <> (SELECT typcollation FROM pg_type WHERE oid = t.typbasetype)
                            THEN ' COLLATE ' || (SELECT format('%I.%I', cn.nspname, c.collname) FROM pg_collation c
                                                 JOIN pg_namespace cn ON cn.oid = c.collnamespace WHERE c.oid = t.typcollation)
                            ELSE '' END,
                       CASE WHEN t.typdefaultbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(t.typdefaultbin, 0) ELSE '' END,
                       CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END,
                       (SELECT coalesce(string_agg(format(' CONSTRAINT %I %s', key, value), '' ORDER BY key), '')
                        FROM jsonb_each_text(checks))));
        sync := format($f$
    DECLARE
        want jsonb := %L;
        c record;
    BEGIN
        EXECUTE %L;
        EXECUTE %L;
        FOR c IN SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
                 WHERE contypid = to_regtype(%L) AND contype = 'c' LOOP
            IF want->>c.conname IS DISTINCT FROM c.def THEN
                EXECUTE format('ALTER DOMAIN %%s DROP CONSTRAINT %%I', %L, c.conname);
            END IF;
        END LOOP;
        FOR c IN SELECT key, value FROM jsonb_each_text(want) LOOP
            IF NOT EXISTS (SELECT FROM pg_constraint WHERE contypid = to_regtype(%L) AND conname = c.key) THEN
                EXECUTE format('ALTER DOMAIN %%s ADD CONSTRAINT %%I %%s', %L, c.key, c.value);
            END IF;
        END LOOP;
    END;$f$, checks,
            format('ALTER DOMAIN %s %s', qname, CASE WHEN t.typdefaultbin IS NOT NULL
                   THEN 'SET DEFAULT ' || pg_get_expr(t.typdefaultbin, 0) ELSE 'DROP DEFAULT' END),
            format('ALTER DOMAIN %s %s NOT NULL', qname, CASE WHEN t.typnotnull THEN 'SET' ELSE 'DROP' END),
            qname, qname, qname, qname);
    ELSIF t.typtype = 'c' THEN
        create_type := format('CREATE TYPE %s AS (%s)', qname,
                       (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
                        FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped));
        make := format('EXECUTE %L;', create_type);
        IF p_create THEN  -- a worker's own composite of that name with other attributes: replaced if unused
            sync := format($f$
    DECLARE
        want_names text[] := %L;
        want_types text[] := %L;
        relid oid := (SELECT typrelid FROM pg_type WHERE oid = to_regtype(%L));
    BEGIN
        IF ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = relid AND a.attnum > 0
                 AND NOT a.attisdropped ORDER BY a.attnum) IS DISTINCT FROM want_names
           OR ARRAY(SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = relid AND a.attnum > 0
                    AND NOT a.attisdropped ORDER BY a.attnum)
              IS DISTINCT FROM ARRAY(SELECT coalesce(to_regtype(w)::oid, 0) FROM unnest(want_types) WITH ORDINALITY x(w, o)
                                     ORDER BY o) THEN
            BEGIN
                EXECUTE %L;
                EXECUTE %L;
            EXCEPTION WHEN dependent_objects_still_exist THEN
                RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
                    MESSAGE = format('composite type %%s has other attributes on this worker than (%%s) on the coordinator',
                                     %L, array_to_string(want_names, ', ')),
                    HINT = 'make them the same (ALTER TYPE … on the worker or the coordinator), then run again';
            END;
        END IF;
    END;$f$,
                ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0
                      AND NOT a.attisdropped ORDER BY a.attnum),
                ARRAY(SELECT format_type(a.atttypid, NULL) FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0
                      AND NOT a.attisdropped ORDER BY a.attnum),
                qname, format('DROP TYPE %s', qname), create_type, qname);
        END IF;
    ELSIF t.typtype = 'r' AND (SELECT rngcanonical FROM pg_range WHERE rngtypid = p_type) = 0 THEN
        -- a range (and its multirange) over any subtype; one with a canonical function needs C code
        make := format('EXECUTE %L;', (
            SELECT format('CREATE TYPE %s AS RANGE (SUBTYPE = %s, SUBTYPE_OPCLASS = %s%s%s, MULTIRANGE_TYPE_NAME = %s)',
                          qname, format_type(r.rngsubtype, NULL), format('%I.%I', opn.nspname, o.opcname),
                          CASE WHEN r.rngcollation <> 0 AND r.rngcollation <> st.typcollation
                               THEN format(', COLLATION = %I.%I', cn.nspname, c.collname) ELSE '' END,
                          CASE WHEN r.rngsubdiff <> 0 THEN format(', SUBTYPE_DIFF = %s', r.rngsubdiff::regproc) ELSE '' END,
                          format('%I.%I', mn.nspname, m.typname))
            FROM pg_range r JOIN pg_type st ON st.oid = r.rngsubtype
            JOIN pg_opclass o ON o.oid = r.rngsubopc JOIN pg_namespace opn ON opn.oid = o.opcnamespace
            JOIN pg_type m ON m.oid = r.rngmultitypid JOIN pg_namespace mn ON mn.oid = m.typnamespace
            LEFT JOIN pg_collation c ON c.oid = r.rngcollation LEFT JOIN pg_namespace cn ON cn.oid = c.collnamespace
            WHERE r.rngtypid = p_type));
    ELSE  -- a base type (C functions), a range with a canonical function; a multirange comes with its range
        make := format($f$RAISE EXCEPTION USING ERRCODE = 'undefined_object', MESSAGE = %L,
            HINT = 'create it on every worker first, then run again';$f$,
            format('type %s does not exist on this worker, and pgfleet creates only enums, domains, composite '
                   'types, ranges and the types of extensions', qname));
    END IF;
    RETURN format($do$DO $pgfleet_type$
BEGIN
    IF to_regtype(%L) IS NULL THEN
        %s
        %s
    ELSE
        %s
    END IF;
END $pgfleet_type$
$do$, qname,
        CASE WHEN p_create THEN format('EXECUTE %L;', format('CREATE SCHEMA IF NOT EXISTS %I', schema)) ELSE '' END,
        CASE WHEN p_create THEN make ELSE 'NULL;' END,
        CASE WHEN sync = '' THEN 'NULL;' ELSE sync END);
END $$;

-- Queue, for p_node, the statements that give it the types p_relid uses (before its shard's statement).
CREATE OR REPLACE FUNCTION pgfleet.queue_types(p_relid oid, p_node text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT type_oid FROM pgfleet.carried_types(p_relid) ORDER BY depth DESC, type_oid LOOP
        PERFORM pgfleet.queue_statement(p_node, pgfleet.type_statement(c.type_oid, true));
    END LOOP;
    PERFORM pgfleet.remember_types(p_relid);
END $$;

-- The name each carried type had when it last went to the workers, so that a rename, a schema move or a
-- drop on the coordinator is repeated there under the name the workers know.
CREATE TABLE IF NOT EXISTS pgfleet.type_names (
    type_oid    oid PRIMARY KEY,
    schema_name text NOT NULL,
    type_name   text NOT NULL,
    is_domain   bool NOT NULL,
    attributes  jsonb  -- a composite type's attributes as the workers have them (below; added in migrations.sql)
);

-- A composite type's attributes as the workers have them, [[attnum, name, type], …], so that ALTER TYPE …
-- ADD / DROP / RENAME / ALTER ATTRIBUTE is repeated there attribute by attribute (a rename is not a drop
-- and an add, which would lose the values).
CREATE OR REPLACE FUNCTION pgfleet.type_attributes(p_type oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    SELECT jsonb_agg(jsonb_build_array(a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
    FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
    WHERE t.oid = p_type AND t.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped
$$;

CREATE OR REPLACE FUNCTION pgfleet.remember_types(p_relid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$  -- plpgsql: created before an upgrade adds attributes
BEGIN
    INSERT INTO pgfleet.type_names (type_oid, schema_name, type_name, is_domain, attributes)
    SELECT t.oid, n.nspname, t.typname, t.typtype = 'd', pgfleet.type_attributes(t.oid) FROM pgfleet.carried_types(p_relid) c
    JOIN pg_type t ON t.oid = c.type_oid JOIN pg_namespace n ON n.oid = t.typnamespace
    ON CONFLICT (type_oid) DO NOTHING;
END $$;

-- After ALTER TYPE … ATTRIBUTE of a carried composite type (reported under its relation): the same changes
-- on every worker, found by attribute number against what the workers were last given — dropped ones
-- dropped, renamed ones renamed (through a name of pgfleet's, so that names may swap), changed types
-- altered, new ones added in order.
CREATE OR REPLACE FUNCTION pgfleet.queue_attribute_changes(p_type oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    known pgfleet.type_names;
    now_attrs jsonb := coalesce(pgfleet.type_attributes(p_type), '[]');
    qname text;
    drops text[] := '{}';
    renames text[] := '{}';
    finals text[] := '{}';
    alters text[] := '{}';
    adds text[] := '{}';
    old jsonb;
    cur jsonb;
    step text;
    node text;
BEGIN
    SELECT * INTO known FROM pgfleet.type_names WHERE type_oid = p_type;
    IF known.type_oid IS NULL OR known.attributes IS NULL THEN
        IF pgfleet.type_is_carried(p_type) THEN
            RAISE WARNING 'pgfleet: the workers'' attributes of type % are not known: this change does not reach them',
                p_type::regtype
                USING HINT = 'make the type the same on each worker (pgfleet psql --node <worker>)';
        END IF;
        RETURN;
    END IF;
    qname := format('%I.%I', known.schema_name, known.type_name);
    FOR old IN SELECT e FROM jsonb_array_elements(known.attributes) e LOOP
        SELECT e INTO cur FROM jsonb_array_elements(now_attrs) e WHERE e->0 = old->0;
        IF cur IS NULL THEN
            drops := drops || format('ALTER TYPE %s DROP ATTRIBUTE %I', qname, old->>1);
            CONTINUE;
        END IF;
        IF cur->>1 <> old->>1 THEN
            renames := renames || format('ALTER TYPE %s RENAME ATTRIBUTE %I TO %I', qname, old->>1, 'pgfleet_attribute_' || (old->>0));
            finals := finals || format('ALTER TYPE %s RENAME ATTRIBUTE %I TO %I', qname, 'pgfleet_attribute_' || (old->>0), cur->>1);
        END IF;
        IF cur->>2 <> old->>2 THEN
            alters := alters || format('ALTER TYPE %s ALTER ATTRIBUTE %I TYPE %s', qname, cur->>1, cur->>2);
        END IF;
    END LOOP;
    FOR cur IN SELECT e FROM jsonb_array_elements(now_attrs) e
               WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(known.attributes) o WHERE o->0 = e->0)
               ORDER BY (e->>0)::int LOOP
        adds := adds || format('ALTER TYPE %s ADD ATTRIBUTE %I %s', qname, cur->>1, cur->>2);
    END LOOP;
    IF cardinality(drops || renames || alters || adds) = 0 THEN
        RETURN;
    END IF;
    FOR node IN SELECT n.name FROM pgfleet.nodes n WHERE n.role = 'worker' ORDER BY 1 LOOP
        FOREACH step IN ARRAY drops || renames || finals || alters || adds LOOP
            PERFORM pgfleet.queue_statement(node, step);
        END LOOP;
    END LOOP;
    UPDATE pgfleet.type_names SET attributes = now_attrs WHERE type_oid = p_type;
END $$;

-- After ALTER TYPE / ALTER DOMAIN on the coordinator: on every worker, the rename or schema move (from
-- the name the workers know), then the values or constraints brought in line.
CREATE OR REPLACE FUNCTION pgfleet.queue_type_change(p_type oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    known pgfleet.type_names;
    now_schema text;
    now_name text;
    what text;
    move text := '';
    node text;
BEGIN
    SELECT * INTO known FROM pgfleet.type_names WHERE type_oid = p_type;
    IF known.type_oid IS NULL AND NOT pgfleet.type_is_carried(p_type) THEN
        RETURN;
    END IF;
    SELECT n.nspname, t.typname, CASE WHEN t.typtype = 'd' THEN 'DOMAIN' ELSE 'TYPE' END INTO now_schema, now_name, what
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = p_type;
    IF known.type_oid IS NOT NULL AND (known.schema_name, known.type_name) IS DISTINCT FROM (now_schema, now_name) THEN
        move := format($f$DO $pgfleet_type$
BEGIN
    IF to_regtype(%L) IS NOT NULL AND to_regtype(%L) IS NULL THEN
        %s
        %s
    END IF;
END $pgfleet_type$
$f$, format('%I.%I', known.schema_name, known.type_name), format('%I.%I', now_schema, now_name),
            CASE WHEN known.type_name <> now_name
                 THEN format('EXECUTE %L;', format('ALTER %s %I.%I RENAME TO %I', what, known.schema_name, known.type_name, now_name))
                 ELSE '' END,
            CASE WHEN known.schema_name <> now_schema
                 THEN format('EXECUTE %L; EXECUTE %L;', format('CREATE SCHEMA IF NOT EXISTS %I', now_schema),
                             format('ALTER %s %I.%I SET SCHEMA %I', what, known.schema_name, now_name, now_schema))
                 ELSE '' END);
        UPDATE pgfleet.type_names SET schema_name = now_schema, type_name = now_name WHERE type_oid = p_type;
    END IF;
    FOR node IN SELECT n.name FROM pgfleet.nodes n WHERE n.role = 'worker' ORDER BY 1 LOOP
        IF move <> '' THEN
            PERFORM pgfleet.queue_statement(node, move);
        END IF;
        PERFORM pgfleet.queue_statement(node, pgfleet.type_statement(p_type, false));
    END LOOP;
END $$;

-- After DROP TYPE / DROP DOMAIN of a carried type: dropped on the workers too, where nothing uses it.
CREATE OR REPLACE FUNCTION pgfleet.queue_type_drop(p_type oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    known pgfleet.type_names;
    node text;
BEGIN
    DELETE FROM pgfleet.type_names WHERE type_oid = p_type RETURNING * INTO known;
    IF known.type_oid IS NULL THEN
        RETURN;
    END IF;
    FOR node IN SELECT n.name FROM pgfleet.nodes n WHERE n.role = 'worker' ORDER BY 1 LOOP
        PERFORM pgfleet.queue_statement(node, format($f$DO $pgfleet_type$
BEGIN
    EXECUTE %L;
EXCEPTION WHEN dependent_objects_still_exist THEN
    NULL;  -- something on the worker still uses it: it stays there
END $pgfleet_type$
$f$, format('DROP %s IF EXISTS %I.%I', CASE WHEN known.is_domain THEN 'DOMAIN' ELSE 'TYPE' END,
            known.schema_name, known.type_name)));
    END LOOP;
END $$;
