-- The SQL API for migrations: pgfleet.distribute_table, pgfleet.reference_table, pgfleet.undistribute_table.
-- Installed after worker_writes.sql by Fleet.install_catalog(). Static SQL; idempotent.
--
-- Each call works inside the caller's transaction and is atomic with it. On the coordinator it does what
-- `pgfleet distribute` / `pgfleet reference` do (new partitioned parent with foreign partitions, or
-- foreign tables for the copies; name swap; sequences, owner, grants; catalog rows). What the workers
-- must do (create the shard tables, receive the rows, check count and checksum) is queued in
-- pgfleet.ddl_queue and applied by flush_queue() at COMMIT with a two-phase commit: a ROLLBACK leaves
-- nothing anywhere, a failed check on a worker aborts the COMMIT. The rows travel inside the queued
-- statements, so the API takes small tables only (pgfleet.sql_api_row_limit()); the CLI moves large
-- ones in batches with progress. The shards exist from COMMIT on: the rest of the same transaction must
-- not read or write the table through its shards.
--
-- The checks are those of plan/layout.py (same messages); the tests compare the two.

CREATE OR REPLACE FUNCTION pgfleet.sql_api_row_limit() RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT 10000::bigint';

-- The extended hash support function (amproc 2) of the key type's default hash opclass, NULL if none:
-- PostgreSQL's hash partitioning computes the partition from exactly this function, and each shard's
-- rule calls it on its worker. topology/read.py hash_function calls this one.
CREATE OR REPLACE FUNCTION pgfleet.key_hash_function(p_type regtype) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT p.amproc::regproc::text
    FROM pg_opclass c
    JOIN pg_am am ON am.oid = c.opcmethod AND am.amname = 'hash'
    JOIN pg_amproc p ON p.amprocfamily = c.opcfamily AND p.amprocnum = 2
         AND p.amproclefttype = c.opcintype AND p.amprocrighttype = c.opcintype
    WHERE c.opcdefault
      AND (c.opcintype = p_type OR c.opcintype = (SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype END
                                                   FROM pg_type t WHERE t.oid = p_type)
           OR (p_type IN ('character varying'::regtype, 'character'::regtype, 'name'::regtype)
               AND c.opcintype = 'text'::regtype))
    ORDER BY (c.opcintype = p_type) DESC
    LIMIT 1
$$;

-- The CHECK a hash shard's rows satisfy: plan/tables.py hash_remainder_expr, the same arithmetic.
CREATE OR REPLACE FUNCTION pgfleet.hash_rule(p_key text, p_hashfn text, p_modulus int, p_remainder int) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    seed constant numeric := 8816678312871386365;
    c constant numeric := 5305509591434766563;
    h text := format('%s(%I, %s)', (SELECT string_agg(quote_ident(p), '.') FROM unnest(string_to_array(p_hashfn, '.')) p),
                     p_key, seed);
    low_sum text;
    high text;
BEGIN
    IF p_modulus & (p_modulus - 1) = 0 THEN
        RETURN format('(((%s & %s) + %s) & %s) = %s', h, p_modulus - 1, mod(c, p_modulus), p_modulus - 1, p_remainder);
    END IF;
    low_sum := format('((%s & 4294967295) + %s)', h, mod(c, 4294967296));
    high := format('(((%s >> 32) & 4294967295) + %s + (%s >> 32)) & 4294967295', h, div(c, 4294967296), low_sum);
    RETURN format('((((%s) %% %s) * %s + (%s & 4294967295)) %% %s) = %s',
                  high, p_modulus, mod(4294967296::numeric, p_modulus), low_sum, p_modulus, p_remainder);
END $$;

-- CREATE statements for a shard (p_rule not NULL, names of indexes and constraints get the shard id) or a
-- reference copy (p_rule NULL, names kept) of p_relid on a worker: plan/tables.py shard_table_ddl.
CREATE OR REPLACE FUNCTION pgfleet.shard_table_sql(p_relid oid, p_schema text, p_table text, p_shard_id bigint,
                                                   p_rule text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
    elements text[];
    stmts text[];
    ix record;
BEGIN
    SELECT array_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod))
                     || CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0
                             THEN format(' COLLATE %I.%I', cn.nspname, co.collname) ELSE '' END
                     || CASE WHEN a.attgenerated = 's' AND p_rule IS NOT NULL  -- postgres_fdw does not send them
                             THEN ' GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
                             WHEN d.adbin IS NOT NULL AND a.attgenerated = '' AND a.attidentity = ''
                                  AND pg_get_expr(d.adbin, d.adrelid) NOT LIKE '%nextval(%'
                             THEN ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END
                     || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END ORDER BY a.attnum)
    INTO elements
    FROM pg_attribute a
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    LEFT JOIN pg_collation co ON co.oid = a.attcollation
    LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
    WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped;
    elements := elements || ARRAY(SELECT format('CONSTRAINT %I %s', conname, pg_get_constraintdef(oid))
                                  FROM pg_constraint WHERE conrelid = p_relid AND contype = 'c' ORDER BY conname);
    IF p_rule IS NOT NULL THEN
        elements := elements || format('CONSTRAINT %I CHECK (%s)', 'pgfleet: distribution key cannot move to another shard', p_rule);
    END IF;
    elements := elements || ARRAY(
        SELECT format('CONSTRAINT %I %s', CASE WHEN p_rule IS NULL THEN conname::text
                                               ELSE pgfleet.shard_object_name(conname, p_shard_id) END,
                      pg_get_constraintdef(oid))
        FROM pg_constraint WHERE conrelid = p_relid AND contype IN ('p', 'u') ORDER BY contype, conname);
    stmts := ARRAY[format('CREATE SCHEMA IF NOT EXISTS %I', p_schema),
                   format('CREATE TABLE %I.%I (%s)', p_schema, p_table, array_to_string(elements, ', ')),
                   format('COMMENT ON TABLE %I.%I IS %L', p_schema, p_table, 'pgfleet shard ' || p_shard_id)];
    FOR ix IN SELECT ic.relname, i.indisunique, substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*$') AS tail
              FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = p_relid
                AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
              ORDER BY ic.relname LOOP
        stmts := stmts || format('CREATE %sINDEX %I ON %I.%I %s', CASE WHEN ix.indisunique THEN 'UNIQUE ' ELSE '' END,
                                 CASE WHEN p_rule IS NULL THEN ix.relname::text
                                      ELSE pgfleet.shard_object_name(ix.relname, p_shard_id) END,
                                 p_schema, p_table, btrim(ix.tail));
    END LOOP;
    RETURN array_to_string(stmts, '; ');
END $$;

-- The checks of plan/layout.py check_table_shape (and check_reference), raised as SQL errors.
CREATE OR REPLACE FUNCTION pgfleet.check_table_shape(p_relid oid, p_reference bool) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    name text := p_relid::regclass::text;
    what text := CASE WHEN p_reference THEN 'reference table' ELSE 'distributed table' END;
    kind "char" := (SELECT relkind FROM pg_class WHERE oid = p_relid);
    bad record;
BEGIN
    IF kind = 'p' THEN
        RAISE EXCEPTION '% is already a partitioned table', name USING ERRCODE = 'wrong_object_type',
            HINT = 'pgfleet distributes plain tables; create it without PARTITION BY';
    ELSIF kind <> 'r' THEN
        RAISE EXCEPTION '% is not a plain table (relkind %)', name, quote_literal(kind) USING ERRCODE = 'wrong_object_type';
    END IF;
    -- types of the coordinator's own go to the workers with the shards (types.sql)
    -- foreign keys: pgfleet.check_foreign_key (foreign_keys.sql) decides
    SELECT conname, contype INTO bad FROM pg_constraint WHERE conrelid = p_relid AND contype = 'x'
    ORDER BY conname LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'exclusion constraint % of % cannot be enforced on a %', bad.conname, name, what
            USING ERRCODE = 'feature_not_supported', HINT = 'drop it and run again';
    END IF;
    SELECT format('%I.%I.%I', n.nspname, c.relname, f.conname) AS fk INTO bad FROM pg_constraint f
    JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE f.contype = 'f' AND f.confrelid = p_relid AND f.conrelid <> p_relid ORDER BY 1 LIMIT 1;
    IF FOUND AND NOT p_reference THEN  -- a reference table stays a plain table on the coordinator
        RAISE EXCEPTION 'foreign key % references %', bad.fk, name USING ERRCODE = 'feature_not_supported',
            HINT = 'drop that foreign key first; keys across shards are not enforced';
    END IF;
    SELECT v.oid::regclass::text AS view INTO bad
    FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
    WHERE d.refobjid = p_relid AND d.classid = 'pg_rewrite'::regclass AND v.oid <> p_relid ORDER BY 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'view % depends on %', bad.view, name USING ERRCODE = 'dependent_objects_still_exist',
            HINT = 'drop the view, distribute the table, then create the view again';
    END IF;
    IF p_reference AND NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = p_relid AND contype = 'p') THEN
        RAISE EXCEPTION 'reference table % needs a primary key', name USING ERRCODE = 'invalid_table_definition',
            HINT = 'writes through the coordinator find the row to change on each copy by its primary key';
    END IF;
END $$;

-- The checks of plan/layout.py check_key; returns the key's type.
CREATE OR REPLACE FUNCTION pgfleet.check_key(p_relid oid, p_key text) RETURNS regtype
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    name text := p_relid::regclass::text;
    col record;
    bad record;
BEGIN
    SELECT attnum, atttypid::regtype AS type, attgenerated INTO col FROM pg_attribute
    WHERE attrelid = p_relid AND attname = p_key AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column % does not exist in %', quote_literal(p_key), name USING ERRCODE = 'undefined_column',
            HINT = 'choose one of: ' || (SELECT string_agg(attname, ', ' ORDER BY attnum) FROM pg_attribute
                                         WHERE attrelid = p_relid AND attnum > 0 AND NOT attisdropped);
    END IF;
    IF col.attgenerated <> '' THEN
        RAISE EXCEPTION 'column % of % is generated; it cannot be the distribution key', p_key, name
            USING ERRCODE = 'invalid_column_definition';
    END IF;
    SELECT conname, contype, (SELECT string_agg(a.attname, ', ' ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(n, ord)
                              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n) AS cols INTO bad
    FROM pg_constraint c WHERE conrelid = p_relid AND contype IN ('p', 'u') AND NOT (col.attnum = ANY (conkey))
    ORDER BY contype, conname LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% % (%) of % does not include the distribution key %',
            CASE WHEN bad.contype = 'p' THEN 'primary key' ELSE 'unique constraint' END, bad.conname, bad.cols, name, p_key
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'each shard can only enforce uniqueness of keys it holds: add the key to the constraint '
                         'or drop it, or choose a key column that the constraint includes';
    END IF;
    SELECT ic.relname INTO bad FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = p_relid AND i.indisunique AND NOT (col.attnum = ANY (i.indkey::int2[]))
      AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = p_relid)
    ORDER BY 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unique index % of % does not include the distribution key %', bad.relname, name, p_key
            USING ERRCODE = 'invalid_table_definition', HINT = 'drop the index or include the key column in it';
    END IF;
    RETURN col.type;
END $$;

-- Common entry checks: the table exists as a relation, the caller owns it, it is not pgfleet's yet, it
-- is small enough. Returns the row count.
CREATE OR REPLACE FUNCTION pgfleet.api_check_table(p_relid oid, p_action text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    t record;
    n bigint;
BEGIN
    SELECT c.oid::regclass::text AS name, c.relowner INTO STRICT t FROM pg_class c WHERE c.oid = p_relid;
    -- session_user: these functions run as the catalog's owner; whatever role the session can become it
    -- could act as anyway, so membership of the session's user in the owner role is what counts.
    IF NOT pg_has_role(session_user, t.relowner, 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table % to %', t.name, p_action USING ERRCODE = 'insufficient_privilege',
            HINT = format('connect as %I (the owner) or as a superuser', pg_get_userbyid(t.relowner));
    END IF;
    SELECT method INTO t FROM pgfleet.tables WHERE relid = p_relid;
    IF FOUND THEN
        RAISE EXCEPTION '% is already a % table', p_relid::regclass, t.method USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = format('undo it first: SELECT pgfleet.undistribute_table(%L)', p_relid::regclass::text);
    END IF;
    EXECUTE format('LOCK TABLE %s IN EXCLUSIVE MODE', p_relid::regclass);
    EXECUTE format('SELECT count(*) FROM (SELECT FROM %s LIMIT %s) s', p_relid::regclass, pgfleet.sql_api_row_limit() + 1)
        INTO n;
    IF n > pgfleet.sql_api_row_limit() THEN
        RAISE EXCEPTION '% has more than % rows, too many to % inside a transaction', p_relid::regclass,
            pgfleet.sql_api_row_limit(), p_action USING ERRCODE = 'program_limit_exceeded',
            HINT = format('use the CLI, which moves rows in batches with progress: pgfleet %s %s',
                          CASE WHEN p_action LIKE 'reference%' THEN 'reference' ELSE 'distribute' END, p_relid::regclass);
    END IF;
    RETURN n;
END $$;

-- The workers, in the order shards are placed on them; p_message if there are none.
CREATE OR REPLACE FUNCTION pgfleet.api_workers(p_message text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    workers text[] := ARRAY(SELECT n.name FROM pgfleet.nodes n WHERE n.role = 'worker' ORDER BY n.added_at, n.name);
BEGIN
    IF cardinality(workers) = 0 THEN
        RAISE EXCEPTION '%', p_message USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'add one with ''pgfleet node add'' or ''pgfleet up --workers N''';
    END IF;
    RETURN workers;
END $$;

-- Queue p_statement for p_node in this transaction; the transaction's first row fires flush_queue().
CREATE OR REPLACE FUNCTION pgfleet.queue_statement(p_node text, p_statement text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pgfleet AS $$
    INSERT INTO pgfleet.ddl_queue (node, statement, flush)
    VALUES (p_node, p_statement, NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id()))
$$;

-- Queue, for the shard p_schema.p_table on p_node, the rows of p_source that satisfy p_where, then a
-- check of the shard's row count and checksum against what was sent (under pinned output settings).
-- Stored generated columns travel only to reference copies (p_with_generated): shards compute them.
CREATE OR REPLACE FUNCTION pgfleet.queue_rows(p_node text, p_source oid, p_where text, p_schema text, p_table text,
                                             p_with_generated bool)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    codec pgfleet.row_codecs;
    rows jsonb;
    n bigint;
    checksum numeric;
    batch jsonb;
    sum_sql constant text := 'SELECT count(*), coalesce(sum(hashtextextended(%s::text, 0)::numeric), 0) FROM %s n';
BEGIN
    SELECT NULL, NULL, 'ARRAY[' || string_agg(format('n.%I::text', attname), ', ' ORDER BY attnum) || ']',
           string_agg(format('%I', attname), ', ' ORDER BY attnum),
           string_agg(format('(r->>%s)::%s', pos - 1, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)
    INTO codec
    FROM (SELECT *, row_number() OVER (ORDER BY attnum) AS pos FROM pg_attribute
          WHERE attrelid = p_source AND attnum > 0 AND NOT attisdropped AND (p_with_generated OR attgenerated = '')) a;
    EXECUTE format('SELECT jsonb_agg(%s) FROM %s n WHERE %s', codec.texts, p_source::regclass, p_where) INTO rows;
    EXECUTE format(sum_sql || ' WHERE %s', codec.texts, p_source::regclass, p_where) INTO n, checksum;
    FOR batch IN SELECT pgfleet.json_batches(rows, 5000) WHERE rows IS NOT NULL LOOP
        PERFORM pgfleet.queue_statement(p_node, format('INSERT INTO %I.%I (%s) SELECT %s FROM jsonb_array_elements(%L) r',
                                                       p_schema, p_table, codec.names, codec.casts, batch));
    END LOOP;
    PERFORM pgfleet.queue_statement(p_node, format(
        'DO %L', format($v$DECLARE n bigint; s numeric; BEGIN
            PERFORM set_config('DateStyle', 'ISO, YMD', true); PERFORM set_config('IntervalStyle', 'postgres', true);
            PERFORM set_config('extra_float_digits', '3', true); PERFORM set_config('TimeZone', 'UTC', true);
            EXECUTE %L INTO n, s;
            IF n <> %s OR s <> %s THEN
                RAISE EXCEPTION 'pgfleet: verification of %s failed: %s rows sent, %% rows with checksum %% arrived', n, s;
            END IF; END $v$, format(sum_sql, codec.texts, format('%I.%I', p_schema, p_table)), n, checksum,
            replace(format('%I.%I', p_schema, p_table), '''', ''''''), n)));
    RETURN n;
END $$;

-- Give p_new (the replacement) p_old's name, sequences, identity positions, owner and grants; drop p_old.
CREATE OR REPLACE FUNCTION pgfleet.swap_tables(p_old oid, p_new oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_old);
    name text := (SELECT relname FROM pg_class WHERE oid = p_old);
    owner text := (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = p_old);
    r record;
    restarts text[] := '{}';
    next_value numeric;
BEGIN
    FOR r IN SELECT a.attname, s.oid::regclass AS seq, q.seqincrement
             FROM pg_attribute a JOIN pg_class s ON s.oid = pg_get_serial_sequence(p_old::regclass::text, a.attname)::regclass
             JOIN pg_sequence q ON q.seqrelid = s.oid
             WHERE a.attrelid = p_old AND a.attidentity <> '' AND NOT a.attisdropped LOOP
        EXECUTE format('SELECT last_value + CASE WHEN is_called THEN %s ELSE 0 END FROM %s', r.seqincrement, r.seq)
            INTO next_value;
        restarts := restarts || format('ALTER COLUMN %I RESTART WITH %s', r.attname, next_value);
    END LOOP;
    EXECUTE format('ALTER TABLE %s RENAME TO %I', p_old::regclass, 'pgfleet_old_' || p_old);
    EXECUTE format('ALTER TABLE %s RENAME TO %I', p_new::regclass, name);
    EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', schema, name, owner);
    FOR r IN SELECT s.oid::regclass AS seq, a.attname
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.refobjid = p_old AND d.deptype = 'a' AND s.relkind = 'S' LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNED BY %I.%I.%I', r.seq, schema, name, r.attname);
    END LOOP;
    IF cardinality(restarts) > 0 THEN
        EXECUTE format('ALTER TABLE %I.%I %s', schema, name, array_to_string(restarts, ', '));
    END IF;
    PERFORM pgfleet.copy_privileges(p_old, p_new);  -- table and column privileges (grants.sql)
    EXECUTE format('DROP TABLE %s', p_old::regclass);
END $$;

-- bounds (range) and lists (list) came after the first version: its signature goes, or calls would be ambiguous
DROP FUNCTION IF EXISTS pgfleet.distribute_table(regclass, text, int, regclass);
CREATE OR REPLACE FUNCTION pgfleet.distribute_table(p_table regclass, p_key text, shard_count int DEFAULT NULL,
                                                    colocate_with regclass DEFAULT NULL, bounds text[] DEFAULT NULL,
                                                    lists jsonb DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet
SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET TimeZone = 'UTC' AS $$
DECLARE
    internal text := coalesce(current_setting('pgfleet.internal', true), '');
    schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table);
    name text := (SELECT relname FROM pg_class WHERE oid = p_table);
    staging text := 'pgfleet_staging_' || p_table::oid;
    key_type regtype;
    hashfn text;
    other record;
    colocation int;
    workers text[];
    count int;
    moved bigint := 0;
    total bigint;
    sid bigint;
    shard_name text;
    node text;
    rule text;
    new_oid oid;
    i int;
    fks pgfleet.foreign_keys[];
    fk pgfleet.foreign_keys;
    indexes jsonb;
    dist_method text := CASE WHEN bounds IS NOT NULL THEN 'range' WHEN lists IS NOT NULL THEN 'list' ELSE 'hash' END;
    shard pgfleet.value_shard;
    value_shards pgfleet.value_shard[];
BEGIN
    PERFORM pgfleet.api_check_table(p_table, 'distribute it');
    PERFORM pgfleet.park_referencing_keys(p_table);  -- for the referencing table's turn (parked_keys.sql)
    PERFORM pgfleet.check_table_shape(p_table, false);
    key_type := pgfleet.check_key(p_table, p_key);
    IF bounds IS NOT NULL AND lists IS NOT NULL THEN
        RAISE EXCEPTION 'give bounds (range) or lists (list), not both' USING ERRCODE = 'invalid_parameter_value';
    ELSIF dist_method <> 'hash' AND (shard_count IS NOT NULL OR colocate_with IS NOT NULL) THEN
        RAISE EXCEPTION '% decides the shards: leave out shard_count and colocate_with', CASE dist_method WHEN 'range'
            THEN 'bounds' ELSE 'lists' END USING ERRCODE = 'invalid_parameter_value',
            HINT = 'the bounds or lists give the shards; with colocate_with alone the table takes those of the other';
    END IF;
    hashfn := pgfleet.key_hash_function(key_type);
    IF hashfn IS NULL AND dist_method = 'hash' THEN
        RAISE EXCEPTION 'type % has no hash function, so it cannot be a hash distribution key', key_type
            USING ERRCODE = 'feature_not_supported', HINT = 'distribute by range (bounds => ARRAY[…]) or list (lists => …), or choose another key column';
    END IF;
    IF colocate_with IS NOT NULL THEN
        SELECT t.*, (SELECT count(*) FROM pgfleet.shards s WHERE s.relid = t.relid) AS shards,
               (SELECT atttypid::regtype FROM pg_attribute WHERE attrelid = t.relid AND attname = t.key_column) AS key_type
        INTO other FROM pgfleet.tables t WHERE t.relid = colocate_with;
        IF NOT FOUND THEN
            RAISE EXCEPTION '% is not distributed', colocate_with USING ERRCODE = 'object_not_in_prerequisite_state',
                HINT = format('distribute it first, then co-locate %s with it', p_table);
        ELSIF other.method = 'reference' THEN
            RAISE EXCEPTION '% is a reference table; co-locate with a distributed table', colocate_with
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF other.key_type <> key_type THEN
            RAISE EXCEPTION 'key % of % is % but the key of % is %', p_key, p_table, key_type, colocate_with, other.key_type
                USING ERRCODE = 'datatype_mismatch', HINT = 'co-located tables need keys of the same type';
        ELSIF shard_count IS NOT NULL AND shard_count <> other.shards THEN
            RAISE EXCEPTION '% has % shards, not %', colocate_with, other.shards, shard_count
                USING ERRCODE = 'invalid_parameter_value', HINT = 'leave out shard_count with colocate_with';
        END IF;
        colocation := other.colocation_id;
        count := other.shards;
        IF other.method <> 'hash' THEN  -- the same ranges or lists, on the same nodes
            dist_method := other.method;
            value_shards := ARRAY(SELECT ROW(s.shard_index, s.node, s.lower_bound, s.upper_bound, s.list_values)::pgfleet.value_shard
                                  FROM pgfleet.shards s WHERE s.relid = colocate_with ORDER BY s.shard_index);
        END IF;
    ELSIF dist_method <> 'hash' THEN
        workers := pgfleet.api_workers('there are no workers to place shards on');
        value_shards := ARRAY(SELECT v FROM pgfleet.api_value_shards(key_type, bounds, lists, workers) v
                              ORDER BY v.shard_index);
        count := cardinality(value_shards);
    ELSE
        count := coalesce(shard_count, 8);
        IF count NOT BETWEEN 1 AND 4096 THEN
            RAISE EXCEPTION 'shard count % is out of range', count USING ERRCODE = 'invalid_parameter_value', HINT = 'use 1..4096';
        END IF;
    END IF;
    workers := pgfleet.api_workers('there are no workers to place shards on');
    -- its own keys, and those parked when the table they reference was distributed in this transaction
    fks := ARRAY(SELECT f FROM pgfleet.foreign_keys_of(p_table) f
                 UNION ALL SELECT k.fk FROM pgfleet.parked_foreign_keys k WHERE (k.fk).relid = p_table);
    PERFORM pgfleet.check_foreign_key(p_table, p_key, colocation, f) FROM unnest(fks) f;
    PERFORM set_config('pgfleet.internal', 'on', true);
    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED '
                   'INCLUDING CONSTRAINTS) PARTITION BY %s (%I)', schema, staging, p_table, upper(dist_method), p_key);
    new_oid := format('%I.%I', schema, staging)::regclass;
    IF colocation IS NULL THEN
        INSERT INTO pgfleet.colocation_groups (method, key_type, shard_count) VALUES (dist_method, key_type::text, count)
        RETURNING id INTO colocation;
    END IF;
    INSERT INTO pgfleet.tables (relid, schema_name, table_name, method, key_column, colocation_id)
    VALUES (p_table, schema, name, dist_method, p_key, colocation);  -- relid is moved to the new table below
    FOREACH shard IN ARRAY coalesce(value_shards, '{}'::pgfleet.value_shard[]) LOOP  -- range and list
        sid := nextval('pgfleet.shard_id_seq');
        shard_name := pgfleet.shard_object_name(name, sid);
        rule := pgfleet.value_rule(p_key, shard.lower_bound, shard.upper_bound, shard.list_values);
        EXECUTE format('CREATE FOREIGN TABLE %I.%I PARTITION OF %I.%I %s SERVER %I OPTIONS (schema_name %L, table_name %L%s)',
                       'pgfleet_shards', shard_name, schema, staging,
                       pgfleet.value_bound(shard.lower_bound, shard.upper_bound, shard.list_values),
                       'pgfleet_' || shard.shard_node, schema, shard_name,
                       CASE WHEN colocate_with IS NULL THEN '' ELSE ', use_remote_estimate ''true''' END);
        INSERT INTO pgfleet.shards (shard_id, relid, shard_index, node, shard_schema, shard_table, foreign_schema,
                                    foreign_table, lower_bound, upper_bound, list_values)
        VALUES (sid, p_table, shard.shard_index, shard.shard_node, schema, shard_name, 'pgfleet_shards', shard_name,
                shard.lower_bound, shard.upper_bound, shard.list_values);
        PERFORM pgfleet.queue_types(p_table, shard.shard_node);
        PERFORM pgfleet.queue_statement(shard.shard_node, pgfleet.shard_table_sql(p_table, schema, shard_name, sid, rule));
        moved := moved + pgfleet.queue_rows(shard.shard_node, p_table, rule, schema, shard_name, false);
    END LOOP;
    FOR i IN 0 .. count - 1 LOOP
        EXIT WHEN dist_method <> 'hash';
        sid := nextval('pgfleet.shard_id_seq');
        shard_name := pgfleet.shard_object_name(name, sid);
        node := CASE WHEN colocate_with IS NULL THEN workers[i % cardinality(workers) + 1]
                     ELSE (SELECT s.node FROM pgfleet.shards s WHERE s.relid = colocate_with AND s.shard_index = i) END;
        rule := pgfleet.hash_rule(p_key, hashfn, count, i);
        EXECUTE format('CREATE FOREIGN TABLE %I.%I PARTITION OF %I.%I FOR VALUES WITH (MODULUS %s, REMAINDER %s) '
                       'SERVER %I OPTIONS (schema_name %L, table_name %L%s)', 'pgfleet_shards', shard_name, schema, staging,
                       count, i, 'pgfleet_' || node, schema, shard_name,
                       CASE WHEN colocate_with IS NULL THEN '' ELSE ', use_remote_estimate ''true''' END);
        INSERT INTO pgfleet.shards (shard_id, relid, shard_index, node, shard_schema, shard_table, foreign_schema,
                                    foreign_table, modulus, remainder)
        VALUES (sid, p_table, i, node, schema, shard_name, 'pgfleet_shards', shard_name, count, i);
        IF i < cardinality(workers) OR colocate_with IS NOT NULL THEN  -- each node's first shard: the types first
            PERFORM pgfleet.queue_types(p_table, node);
        END IF;
        PERFORM pgfleet.queue_statement(node, pgfleet.shard_table_sql(p_table, schema, shard_name, sid, rule));
        -- PostgreSQL's hash partitioning puts NULL keys in remainder 0; the rule lets them pass anywhere
        moved := moved + pgfleet.queue_rows(node, p_table, CASE WHEN i = 0 THEN format('(%s) OR %I IS NULL', rule, p_key)
                                                                 ELSE rule END, schema, shard_name, false);
    END LOOP;
    EXECUTE format('SELECT count(*) FROM %s', p_table) INTO total;
    IF moved <> total AND dist_method <> 'hash' THEN
        RAISE EXCEPTION '% rows of % have a key in no %', total - moved, p_table,
            CASE dist_method WHEN 'range' THEN 'range (or NULL)' ELSE 'list (or NULL)' END
            USING ERRCODE = 'check_violation', HINT = CASE dist_method WHEN 'range'
                THEN 'open the ends with ''min'' and ''max'', or fix those rows; nothing was changed'
                ELSE 'add their values to a site, or fix those rows; nothing was changed' END;
    ELSIF moved <> total THEN
        RAISE EXCEPTION 'pgfleet: % rows of % would go to no shard', total - moved, p_table USING ERRCODE = 'internal_error',
            HINT = 'nothing was changed; report this with the table definition';
    END IF;
    IF colocate_with IS NOT NULL THEN
        FOR shard_name IN SELECT s.foreign_table FROM pgfleet.shards s JOIN pg_foreign_table f
                              ON f.ftrelid = format('%I.%I', s.foreign_schema, s.foreign_table)::regclass
                          WHERE s.relid = colocate_with AND NOT 'use_remote_estimate=true' = ANY (coalesce(f.ftoptions, '{}')) LOOP
            EXECUTE format('ALTER FOREIGN TABLE %I.%I OPTIONS (ADD use_remote_estimate ''true'')', 'pgfleet_shards', shard_name);
        END LOOP;
    END IF;
    indexes := pgfleet.index_defs(p_table);
    PERFORM pgfleet.swap_tables(p_table, new_oid);
    -- ON UPDATE of the primary key is not declared: move the rows by hand
    INSERT INTO pgfleet.tables (relid, schema_name, table_name, method, key_column, colocation_id)
    SELECT new_oid, t.schema_name, t.table_name, t.method, t.key_column, t.colocation_id FROM pgfleet.tables t WHERE t.relid = p_table;
    UPDATE pgfleet.shards SET relid = new_oid WHERE relid = p_table;
    DELETE FROM pgfleet.tables WHERE relid = p_table;
    UPDATE pgfleet.parked_foreign_keys k SET fk.ref_relid = new_oid WHERE (k.fk).ref_relid = p_table;
    PERFORM pgfleet.snapshot_columns(new_oid);
    PERFORM pgfleet.align_owners(new_oid);
    PERFORM pgfleet.queue_privileges(new_oid);  -- roles and privileges on the new shards, after them
    FOREACH fk IN ARRAY fks LOOP  -- the table's foreign keys, now on its shards
        fk.relid := new_oid;
        PERFORM pgfleet.enforce_foreign_key(fk);
    END LOOP;
    DELETE FROM pgfleet.parked_foreign_keys k WHERE (k.fk).relid = p_table;
    PERFORM pgfleet.adopt_indexes(new_oid, indexes);
    PERFORM set_config('pgfleet.internal', internal, true);
    RETURN moved;
END $$;

CREATE OR REPLACE FUNCTION pgfleet.reference_table(p_table regclass) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet
SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET TimeZone = 'UTC' AS $$
DECLARE
    internal text := coalesce(current_setting('pgfleet.internal', true), '');
    schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table);
    name text := (SELECT relname FROM pg_class WHERE oid = p_table);
    workers text[];
    node text;
    sid bigint;
    foreign_name text;
    columns text;
    n bigint := 0;
    i int := 0;
BEGIN
    n := pgfleet.api_check_table(p_table, 'make it a reference table');
    PERFORM pgfleet.check_table_shape(p_table, true);
    workers := pgfleet.api_workers('there are no workers to copy a reference table to');
    PERFORM set_config('pgfleet.internal', 'on', true);
    INSERT INTO pgfleet.tables (relid, schema_name, table_name, method) VALUES (p_table, schema, name, 'reference');
    SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum) INTO columns
    FROM pg_attribute WHERE attrelid = p_table AND attnum > 0 AND NOT attisdropped;
    FOREACH node IN ARRAY workers LOOP
        sid := nextval('pgfleet.shard_id_seq');
        foreign_name := pgfleet.shard_object_name(name, sid);
        PERFORM pgfleet.queue_types(p_table, node);
        PERFORM pgfleet.queue_statement(node, pgfleet.shard_table_sql(p_table, schema, name, sid, NULL));
        PERFORM pgfleet.queue_rows(node, p_table, 'true', schema, name, true);
        EXECUTE format('CREATE FOREIGN TABLE %I.%I (%s) SERVER %I OPTIONS (schema_name %L, table_name %L)',
                       'pgfleet_shards', foreign_name, columns, 'pgfleet_' || node, schema, name);
        INSERT INTO pgfleet.shards (shard_id, relid, shard_index, node, shard_schema, shard_table, foreign_schema, foreign_table)
        VALUES (sid, p_table, 0, node, schema, name, 'pgfleet_shards', foreign_name);
        i := i + 1;
    END LOOP;
    FOR i IN 1 .. 4 LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION pgfleet.reference_replicate()',
                       (ARRAY['pgfleet_ref_insert', 'pgfleet_ref_update', 'pgfleet_ref_delete', 'pgfleet_ref_truncate'])[i],
                       (ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'])[i], p_table,
                       (ARRAY['REFERENCING NEW TABLE AS pgfleet_new', 'REFERENCING OLD TABLE AS pgfleet_old NEW TABLE AS pgfleet_new',
                              'REFERENCING OLD TABLE AS pgfleet_old', ''])[i]);
    END LOOP;
    PERFORM pgfleet.snapshot_columns(p_table);
    PERFORM pgfleet.adopt_indexes(p_table, pgfleet.index_defs(p_table));
    PERFORM pgfleet.align_owners(p_table);
    PERFORM pgfleet.queue_privileges(p_table);
    PERFORM set_config('pgfleet.internal', internal, true);
    RETURN n;
END $$;

-- A worker statement that drops a shard table only if it carries this shard's marker (as
-- cluster/distribute.py _drop_marked): never a table pgfleet did not create.
CREATE OR REPLACE FUNCTION pgfleet.drop_shard_sql(p_schema text, p_table text, p_shard_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('DO %L', format('BEGIN IF obj_description(to_regclass(%L), ''pg_class'') = %L THEN DROP TABLE %I.%I; END IF; END',
                                  format('%I.%I', p_schema, p_table), 'pgfleet shard ' || p_shard_id, p_schema, p_table))
$$;

-- Undo distribute_table / reference_table (or the CLI's): the rows come back into a plain table on the
-- coordinator, checked by count and checksum against the shards; the shards or copies are dropped at
-- COMMIT. A distributed table gets back the primary key, unique constraints and indexes its first shard
-- has (names without the shard suffix). Small tables only, as above.
-- The rows come over this session's links, not through the foreign partitions: postgres_fdw keeps its
-- remote transactions (and their locks on the shards) open until after flush_queue(), whose DROP TABLE
-- at COMMIT would wait for them for ever.
CREATE OR REPLACE FUNCTION pgfleet.undistribute_table(p_table regclass) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet, public
SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 SET TimeZone = 'UTC' AS $$
DECLARE
    internal text := coalesce(current_setting('pgfleet.internal', true), '');
    schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table);
    staging text := 'pgfleet_staging_' || p_table::oid;
    owner_oid oid := (SELECT relowner FROM pg_class WHERE oid = p_table);
    t record;
    sh record;
    d record;
    shard_rows bigint;
    shard_sum numeric;
    total bigint := 0;
    total_sum numeric := 0;
    n bigint;
    checksum numeric;
    cols text;
    coldefs text;
    suffix text;
    sum_sql constant text := 'SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM %s t';
BEGIN
    IF NOT pg_has_role(session_user, owner_oid, 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table % to undistribute it', p_table USING ERRCODE = 'insufficient_privilege',
            HINT = format('connect as %I (the owner) or as a superuser', pg_get_userbyid(owner_oid));
    END IF;
    SELECT * INTO t FROM pgfleet.tables WHERE relid = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is neither distributed nor a reference table', p_table USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'nothing to undo';
    END IF;
    PERFORM pgfleet.check_not_referenced(p_table);
    -- The shards are dropped at COMMIT; a remote transaction this session's postgres_fdw keeps open on
    -- one of their workers (the table was read or written through its shards earlier in this
    -- transaction) would hold locks the DROP waits for until after that COMMIT: it would never end.
    BEGIN
        IF EXISTS (SELECT FROM postgres_fdw_get_connections() c JOIN pgfleet.shards s ON c.server_name = 'pgfleet_' || s.node
                   WHERE s.relid = p_table AND c.used_in_xact) THEN
            RAISE EXCEPTION 'this transaction has already used the shards of % (or others on their workers)', p_table
                USING ERRCODE = 'object_in_use',
                      HINT = 'call pgfleet.undistribute_table at the start of a transaction, or in one of its own';
        END IF;
    EXCEPTION WHEN undefined_column THEN  -- postgres_fdw before 1.2 (PostgreSQL 17) cannot tell
        NULL;
    END;
    EXECUTE format('LOCK TABLE %s IN EXCLUSIVE MODE', p_table);
    IF t.method = 'reference' THEN
        EXECUTE format('SELECT count(*) FROM %s', p_table) INTO n;
        PERFORM set_config('pgfleet.internal', 'on', true);
        FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_id LOOP
            PERFORM pgfleet.queue_statement(sh.node, pgfleet.drop_shard_sql(sh.shard_schema, sh.shard_table, sh.shard_id));
            EXECUTE format('DROP FOREIGN TABLE IF EXISTS %I.%I', sh.foreign_schema, sh.foreign_table);
        END LOOP;
        FOREACH suffix IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgfleet_ref_' || suffix, p_table);
        END LOOP;
        DELETE FROM pgfleet.tables WHERE relid = p_table;
        PERFORM set_config('pgfleet.internal', internal, true);
        RETURN n;
    END IF;
    SELECT string_agg(format('%I', attname), ', ' ORDER BY attnum),
           string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)
    INTO cols, coldefs FROM pg_attribute
    WHERE attrelid = p_table AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_index LOOP
        PERFORM pgfleet.worker_link(sh.node);
        PERFORM dblink_exec('pgfleet_' || sh.node, 'SET DateStyle = ''ISO, YMD''; SET IntervalStyle = postgres; '
                            'SET extra_float_digits = 3; SET TimeZone = ''UTC''');
        SELECT r.c, r.s INTO shard_rows, shard_sum FROM dblink('pgfleet_' || sh.node,
            format(sum_sql, format('(SELECT %s FROM %I.%I)', cols, sh.shard_schema, sh.shard_table))) AS r(c bigint, s numeric);
        PERFORM dblink_exec('pgfleet_' || sh.node, 'RESET DateStyle; RESET IntervalStyle; RESET extra_float_digits; RESET TimeZone');
        total := total + shard_rows;
        total_sum := total_sum + shard_sum;
        IF total > pgfleet.sql_api_row_limit() THEN
            RAISE EXCEPTION '% has more than % rows, too many to undistribute it inside a transaction', p_table,
                pgfleet.sql_api_row_limit() USING ERRCODE = 'program_limit_exceeded',
                HINT = format('use the CLI, which moves rows in batches with progress: pgfleet undistribute %s', p_table);
        END IF;
    END LOOP;
    PERFORM set_config('pgfleet.internal', 'on', true);
    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED '
                   'INCLUDING CONSTRAINTS)', schema, staging, p_table);
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_index LOOP
        EXECUTE format('INSERT INTO %I.%I (%s) OVERRIDING SYSTEM VALUE SELECT * FROM dblink(%L, %L) AS r(%s)',
                       schema, staging, cols, 'pgfleet_' || sh.node,
                       format('SELECT %s FROM %I.%I', cols, sh.shard_schema, sh.shard_table), coldefs);
        PERFORM pgfleet.queue_statement(sh.node, pgfleet.drop_shard_sql(sh.shard_schema, sh.shard_table, sh.shard_id));
    END LOOP;
    EXECUTE format(sum_sql, format('(SELECT %s FROM %I.%I)', cols, schema, staging)) INTO n, checksum;
    IF n <> total OR checksum <> total_sum THEN
        RAISE EXCEPTION 'verification of % failed: the shards have % rows, the copy %', p_table, total, n
            USING ERRCODE = 'data_corrupted', HINT = 'nothing was changed; run it again';
    END IF;
    PERFORM pgfleet.drop_parent_indexes(p_table);  -- their names go to the plain table's
    -- constraints and indexes as the first shard has them
    SELECT * INTO sh FROM pgfleet.shards WHERE relid = p_table ORDER BY shard_index LIMIT 1;
    suffix := '_' || sh.shard_id;
    FOR d IN SELECT * FROM dblink('pgfleet_' || sh.node, format(
                 'SELECT c.conname::text, pg_get_constraintdef(c.oid), NULL, false FROM pg_constraint c '
                 'WHERE c.conrelid = %L::regclass AND c.contype IN (''p'', ''u'') '
                 'UNION ALL SELECT ic.relname::text, NULL, substring(pg_get_indexdef(i.indexrelid) FROM '' USING .*$''), i.indisunique '
                 'FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = %L::regclass '
                 'AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)',
                 format('%I.%I', sh.shard_schema, sh.shard_table), format('%I.%I', sh.shard_schema, sh.shard_table)))
             AS r(name text, condef text, tail text, uniq bool) LOOP
        d.name := CASE WHEN right(d.name, length(suffix)) = suffix THEN left(d.name, -length(suffix)) ELSE d.name END;
        IF d.condef IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', schema, staging, d.name, d.condef);
        ELSE
            EXECUTE format('CREATE %sINDEX %I ON %I.%I %s', CASE WHEN d.uniq THEN 'UNIQUE ' ELSE '' END, d.name,
                           schema, staging, btrim(d.tail));
        END IF;
    END LOOP;
    PERFORM pgfleet.restore_foreign_keys(p_table, format('%I.%I', schema, staging)::regclass);
    DELETE FROM pgfleet.tables WHERE relid = p_table;
    PERFORM pgfleet.swap_tables(p_table, format('%I.%I', schema, staging)::regclass);
    PERFORM set_config('pgfleet.internal', internal, true);
    RETURN n;
END $$;

-- Any role may call the API (each call checks that the caller owns the table), so PUBLIC gets USAGE on
-- the schema: the catalog tables stay unreadable (no grants), and every SECURITY DEFINER function of the
-- schema but the API is kept from PUBLIC (they were unreachable without USAGE; the triggers that call
-- them run as the catalog's owner).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'pgfleet'::regnamespace AND p.prosecdef AND p.prokind = 'f'
               AND p.proname NOT IN ('distribute_table', 'reference_table', 'undistribute_table',
                                     'add_foreign_key', 'drop_foreign_key', 'add_unique_constraint',
                                     'drop_unique_constraint') LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
GRANT USAGE ON SCHEMA pgfleet TO PUBLIC;

-- The helpers act with the caller's rights and are for the functions above only.
REVOKE EXECUTE ON FUNCTION pgfleet.api_check_table(oid, text), pgfleet.queue_statement(text, text),
    pgfleet.queue_rows(text, oid, text, text, text, bool), pgfleet.swap_tables(oid, oid) FROM PUBLIC;

-- Catalogs of older versions: a composite type's attributes as the workers have them (types.sql). Types
-- carried before they were kept went to the workers as they are now.
ALTER TABLE pgfleet.type_names ADD COLUMN IF NOT EXISTS attributes jsonb;
UPDATE pgfleet.type_names n SET attributes = pgfleet.type_attributes(n.type_oid)
WHERE n.attributes IS NULL AND EXISTS (SELECT FROM pg_type t WHERE t.oid = n.type_oid AND t.typtype = 'c');
