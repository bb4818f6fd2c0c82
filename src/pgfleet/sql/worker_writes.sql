-- How writes reach the workers: the reference-table triggers queue statements in pgfleet.ddl_queue
-- (as the DDL triggers of catalog.sql do), and flush_queue() applies the queue at COMMIT.
-- Installed after catalog.sql by Fleet.install_catalog(). Static SQL; idempotent.

-- ---------------------------------------------------------------------------------------------
-- Reference tables. The coordinator's table is a normal table; statement-level triggers (with
-- transition tables) queue, for each worker's copy, statements that touch only the written rows,
-- found by primary key. flush_queue() applies them at COMMIT over the session's own READ COMMITTED
-- connections with a two-phase commit, so writers of different rows never conflict on the copies.
CREATE OR REPLACE FUNCTION pgfleet.column_list(p_relid oid, p_prefix text DEFAULT '')
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT string_agg(p_prefix || quote_ident(attname), ', ' ORDER BY attnum)
    FROM pg_attribute WHERE attrelid = p_relid AND attnum > 0 AND NOT attisdropped
$$;

CREATE OR REPLACE FUNCTION pgfleet.key_columns(p_relid oid)
RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT array_agg(a.attname::text ORDER BY k.ord)
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_relid AND i.indisprimary
$$;

-- The codec of p_relid's rows (catalog.sql: codec_of), kept in pgfleet.row_codecs by snapshot_columns().
CREATE OR REPLACE FUNCTION pgfleet.row_codec(p_relid oid, p_keys_only bool) RETURNS pgfleet.row_codecs
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    codec pgfleet.row_codecs;
BEGIN
    SELECT * INTO codec FROM pgfleet.row_codecs WHERE relid = p_relid AND keys_only = p_keys_only;
    IF NOT FOUND THEN  -- a table made reference before row_codecs existed
        codec := pgfleet.codec_of(p_relid, p_keys_only);
    END IF;
    RETURN codec;
END $$;

-- p_rows (a JSON array) in arrays of at most p_size elements.
CREATE OR REPLACE FUNCTION pgfleet.json_batches(p_rows jsonb, p_size int) RETURNS SETOF jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_rows WHERE jsonb_array_length(p_rows) <= p_size
    UNION ALL
    SELECT jsonb_agg(e ORDER BY i) FROM jsonb_array_elements(p_rows) WITH ORDINALITY AS x(e, i)
    WHERE jsonb_array_length(p_rows) > p_size GROUP BY (i - 1) / p_size
$$;

-- Queue, for every copy of p_relid, p_template with the copy's schema and table as %1$I.%2$I and the
-- rows as %3$s, in statements of at most 5000 rows (a bulk write becomes several statements). With
-- rows, the copy runs it as a prepared statement (named after its text, so a new column list is a new
-- name) with the rows as its parameter: the workers parse and plan each shape once per link, not once
-- per write. Called by reference_replicate() only, whose owner and search_path it runs with.
CREATE OR REPLACE FUNCTION pgfleet.queue_for_copies(p_relid oid, p_template text, p_rows jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    batch_rows constant int := 5000;  -- rows per statement
    -- Only the transaction's first row fires flush_queue(). A rolled-back savepoint takes its rows
    -- with it, so the next row is the first again.
    first bool := NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id());
    batch jsonb;
BEGIN
    IF p_rows IS NULL THEN
        INSERT INTO pgfleet.ddl_queue (node, statement, flush)
        SELECT s.node, format(p_template, s.shard_schema, s.shard_table), first AND row_number() OVER (ORDER BY s.node) = 1
        FROM pgfleet.shards s WHERE s.relid = p_relid ORDER BY s.node;
        RETURN;
    END IF;
    FOREACH batch IN ARRAY CASE WHEN jsonb_array_length(p_rows) <= batch_rows THEN ARRAY[p_rows]
                                ELSE ARRAY(SELECT pgfleet.json_batches(p_rows, batch_rows)) END LOOP
        INSERT INTO pgfleet.ddl_queue (node, statement, prepared, prepare, rows, flush)
        SELECT s.node, format('EXECUTE %I(%L)', p.name, batch::text), p.name,
               format('PREPARE %I(jsonb) AS %s', p.name, p.body), batch, first AND row_number() OVER (ORDER BY s.node) = 1
        FROM pgfleet.shards s
        CROSS JOIN LATERAL (SELECT format(p_template, s.shard_schema, s.shard_table, '$1') AS body) b
        CROSS JOIN LATERAL (SELECT 'pgfleet_' || md5(b.body) AS name, b.body) p
        WHERE s.relid = p_relid ORDER BY s.node;
        first := false;
    END LOOP;
END $$;

-- The SET clauses pin the text output of values (as postgres_fdw does for what it sends), so the
-- writer's DateStyle, IntervalStyle or extra_float_digits never change what the copies receive.
CREATE OR REPLACE FUNCTION pgfleet.reference_replicate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet
SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET extra_float_digits = 3 AS $$
DECLARE
    key_codec pgfleet.row_codecs;
    all_codec pgfleet.row_codecs;
    old_keys jsonb;
    new_rows jsonb;
    same_keys bool;
BEGIN
    -- The router wrote every copy itself with this statement, in the same transaction (router/refcopies.py):
    -- nothing to queue. Only a superuser session (the router's login) may ask for that.
    IF current_setting('pgfleet.copies_written', true) = TG_RELID::text THEN
        IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = session_user) THEN
            RAISE EXCEPTION 'pgfleet: pgfleet.copies_written is the router''s setting; this session may not use it'
                USING ERRCODE = '42501', HINT = 'Reset it (RESET pgfleet.copies_written) and write the table again.';
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pgfleet.queue_for_copies(TG_RELID, 'TRUNCATE %1$I.%2$I', NULL);
        RETURN NULL;
    END IF;
    key_codec := pgfleet.row_codec(TG_RELID, true);
    all_codec := pgfleet.row_codec(TG_RELID, false);
    IF TG_OP <> 'INSERT' AND key_codec.match IS NULL THEN
        RAISE EXCEPTION 'pgfleet: reference table % has no primary key, so its rows cannot be found on the copies',
            TG_RELID::regclass USING HINT = 'Add the primary key back (ALTER TABLE … ADD PRIMARY KEY).';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        EXECUTE format('SELECT (SELECT jsonb_agg(%1$s) FROM pgfleet_old n), (SELECT jsonb_agg(%2$s) FROM pgfleet_new n), '
                       'NOT EXISTS (SELECT %1$s FROM pgfleet_old n EXCEPT SELECT %1$s FROM pgfleet_new n)',
                       key_codec.texts, all_codec.texts) INTO old_keys, new_rows, same_keys;
        IF same_keys AND new_rows IS NULL THEN
            RETURN NULL;  -- no row was updated
        ELSIF same_keys THEN  -- no key changed: the copies update in place (HOT, no new index entries)
            PERFORM pgfleet.queue_for_copies(TG_RELID,
                'UPDATE %1$I.%2$I c SET (' || replace(all_codec.names, '%', '%%') || ') = ROW('
                || replace(all_codec.casts, '%', '%%') || ') FROM jsonb_array_elements(%3$s) r WHERE '
                || replace(all_codec.match, '%', '%%'), new_rows);
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT jsonb_agg(%s) FROM pgfleet_old n', key_codec.texts) INTO old_keys;
    ELSE
        EXECUTE format('SELECT jsonb_agg(%s) FROM pgfleet_new n', all_codec.texts) INTO new_rows;
    END IF;
    -- DELETE, INSERT, and an UPDATE that changed keys: delete the old keys, insert the new rows
    IF old_keys IS NOT NULL THEN
        PERFORM pgfleet.queue_for_copies(TG_RELID,
            'DELETE FROM %1$I.%2$I c USING jsonb_array_elements(%3$s) r WHERE ' || replace(key_codec.match, '%', '%%'),
            old_keys);
    END IF;
    IF new_rows IS NOT NULL THEN
        PERFORM pgfleet.queue_for_copies(TG_RELID,
            'INSERT INTO %1$I.%2$I (' || replace(all_codec.names, '%', '%%') || ') SELECT '
            || replace(all_codec.casts, '%', '%%') || ' FROM jsonb_array_elements(%3$s) r', new_rows);
    END IF;
    RETURN NULL;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Applying the queue at COMMIT. Each session keeps one dblink connection per worker ("link", named
-- after the worker's foreign server) open across transactions, so a commit pays no connection set-up.
-- A transaction's statements for a worker travel as one string: BEGIN ISOLATION LEVEL READ COMMITTED;
-- statements; PREPARE TRANSACTION 'pgfleet_xact_<xid>_<node>'. It is sent to every worker before any
-- answer is awaited. When all have prepared, COMMIT PREPARED goes to all; otherwise the prepared ones
-- are rolled back and one error aborts the coordinator's transaction: nothing is applied anywhere.

-- Open this session's link to p_node if it is not open (or p_reopen); true when it was opened. On
-- opening, prepared transactions that an interrupted flush left on the worker are settled by the fate
-- of their coordinator transaction, so a crash never leaves rows locked on a copy.
CREATE OR REPLACE FUNCTION pgfleet.worker_link(p_node text, p_reopen bool DEFAULT false) RETURNS bool
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet, public AS $$
DECLARE
    link text := 'pgfleet_' || p_node;
    two_phase bool;
    leftover record;
BEGIN
    IF link = ANY (coalesce(dblink_get_connections(), '{}')) THEN
        IF NOT p_reopen THEN
            RETURN false;
        END IF;
        PERFORM dblink_disconnect(link);
    END IF;
    PERFORM dblink_connect(link, link);
    PERFORM set_config('pgfleet.prepared_' || p_node, '', false);  -- a new link has prepared nothing
    SELECT t INTO two_phase FROM dblink(link, 'SELECT current_setting(''max_prepared_transactions'')::int > 0') AS r(t bool);
    PERFORM set_config('pgfleet.two_phase_' || p_node, two_phase::text, false);
    IF two_phase THEN
      BEGIN
        FOR leftover IN SELECT g.gid, pg_xact_status(substring(g.gid FROM '^pgfleet_xact_(\d+)_')::xid8) AS status
                        FROM dblink(link, 'SELECT gid FROM pg_prepared_xacts WHERE database = current_database() '
                                          'AND gid LIKE ''pgfleet\_xact\_%''') AS g(gid text) LOOP
            CONTINUE WHEN leftover.status IS NULL OR leftover.status = 'in progress';
            PERFORM dblink_exec(link, format('%s PREPARED %L',
                                             CASE leftover.status WHEN 'committed' THEN 'COMMIT' ELSE 'ROLLBACK' END,
                                             leftover.gid));
        END LOOP;
      EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgfleet: could not settle the prepared transactions left on node %: %', p_node, SQLERRM;
      END;
    END IF;
    RETURN true;
END $$;

-- Whether p_node (whose link is open) takes PREPARE TRANSACTION; workers without
-- max_prepared_transactions commit on their own, one after the other (not atomic).
CREATE OR REPLACE FUNCTION pgfleet.worker_two_phase(p_node text) RETURNS bool
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet, public AS $$
DECLARE
    known text := current_setting('pgfleet.two_phase_' || p_node, true);
BEGIN
    IF coalesce(known, '') = '' THEN  -- the setting went with a rolled-back transaction; the link stayed
        SELECT t::text INTO known FROM dblink('pgfleet_' || p_node,
            'SELECT current_setting(''max_prepared_transactions'')::int > 0') AS r(t bool);
        PERFORM set_config('pgfleet.two_phase_' || p_node, known, false);
    END IF;
    RETURN known::bool;
END $$;

-- Wait for the results of the query sent on p_node's link: NULL when every statement succeeded, else
-- {sqlstate, message}. A link whose query failed is closed: the worker rolls back what it had not prepared.
CREATE OR REPLACE FUNCTION pgfleet.link_wait(p_node text) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet, public AS $$
DECLARE
    state text;
    msg text;
BEGIN
    LOOP  -- one result per statement, then an empty one
        EXIT WHEN NOT EXISTS (SELECT FROM dblink_get_result('pgfleet_' || p_node) AS r(status text));
    END LOOP;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    PERFORM dblink_disconnect('pgfleet_' || p_node);
    RETURN ARRAY[state, msg];
END $$;

-- Send p_query on p_node's link (opening it first if p_open); NULL if sent, else {sqlstate, message}.
CREATE OR REPLACE FUNCTION pgfleet.link_send(p_node text, p_query text, p_open bool) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet, public AS $$
DECLARE
    state text;
    msg text;
BEGIN
    IF p_open THEN
        PERFORM pgfleet.worker_link(p_node, true);
    END IF;
    IF dblink_send_query('pgfleet_' || p_node, p_query) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'connection_failure', MESSAGE = dblink_error_message('pgfleet_' || p_node);
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    IF 'pgfleet_' || p_node = ANY (coalesce(dblink_get_connections(), '{}')) THEN
        PERFORM dblink_disconnect('pgfleet_' || p_node);
    END IF;
    RETURN ARRAY[state, msg];
END $$;

-- Per worker, the statements transaction p_xid queued for it, in order, each prepared statement's
-- PREPARE before its first EXECUTE unless the link has it already (the session setting
-- pgfleet.prepared_<node>: a hint, as it reverts with an aborted transaction; a stale one fails with
-- 26000/42P05 and flush_queue resends on a new link); and the names this text prepares.
-- (Schema-qualified and without SET clauses, so that it is inlined into flush_queue's query.)
CREATE OR REPLACE FUNCTION pgfleet.link_batches(p_xid xid8)
RETURNS TABLE (node text, statements text, prepares text) LANGUAGE sql STABLE AS $$
    SELECT q.node,
           pg_catalog.string_agg(CASE WHEN q.to_prepare THEN q.prepare || '; ' ELSE '' END || q.statement, '; ' ORDER BY q.id),
           pg_catalog.string_agg(CASE WHEN q.to_prepare THEN ' ' || q.prepared END, '')
    FROM (SELECT d.id, d.node, d.statement, d.prepare, d.prepared,
                 d.prepared IS NOT NULL AND pg_catalog.row_number() OVER (PARTITION BY d.node, d.prepared ORDER BY d.id) = 1
                 AND pg_catalog.strpos(coalesce(pg_catalog.current_setting('pgfleet.prepared_' || d.node, true), ''),
                                       d.prepared) = 0 AS to_prepare
          FROM pgfleet.ddl_queue d WHERE d.xid = p_xid) q
    GROUP BY q.node
$$;

-- How long a worker's part of a commit may wait for a lock when the same transaction already used
-- that worker through postgres_fdw (whose remote transaction ends only after the flush).
CREATE OR REPLACE FUNCTION pgfleet.lock_wait_limit() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT '5s' $$;

-- The deferred constraint trigger on the queue: runs the transaction's queued statements on the
-- workers at COMMIT (see above). DDL and reference-table writes share the queue, so they reach a
-- worker in the order the transaction made them. Each phase runs in one exception block for all
-- workers (a block is a subtransaction); after a failure at worker i it resumes at worker i + 1.
CREATE OR REPLACE FUNCTION pgfleet.flush_queue() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet, public AS $$
DECLARE
    me xid8 := pg_current_xact_id();
    nodes text[];
    links text[];
    open_links text[] := coalesce(dblink_get_connections(), '{}');
    n int;
    batches text[];
    prepares text[];
    gids text[] := '{}';
    reused bool[] := '{}';
    states text[] := '{}';    -- NULL: fine so far; else the SQLSTATE of the node's failure
    messages text[] := '{}';
    err text[];
    two_phase text;
    batch text;
    prepared text;
    i int;
    failed int;
    fdw_used text[];          -- foreign servers this transaction already used through postgres_fdw
    heads text[] := '{}';     -- how each worker's transaction begins
BEGIN
    PERFORM pgfleet.check_parked_keys();  -- before anything reaches a worker (parked_keys.sql)
    SELECT array_agg(DISTINCT node ORDER BY node) INTO nodes FROM pgfleet.ddl_queue WHERE xid = me;
    IF nodes IS NULL THEN
        RETURN NULL;  -- an earlier firing in this transaction flushed everything
    END IF;
    -- Conflicts with the EXCLUSIVE lock a backup holds while it creates its restore points (cluster/
    -- restore_point.py), so no restore point falls between the workers' commits and the coordinator's.
    LOCK TABLE pgfleet.commit_decisions IN ROW EXCLUSIVE MODE;
    n := cardinality(nodes);
    links := ARRAY(SELECT 'pgfleet_' || x FROM unnest(nodes) AS x);
    -- 0. a link per worker (opened only when the session has none), and whether it takes PREPARE
    FOR i IN 1 .. n LOOP
        reused[i] := links[i] = ANY (open_links);
        two_phase := current_setting('pgfleet.two_phase_' || nodes[i], true);
        IF NOT reused[i] OR coalesce(two_phase, '') = '' THEN
            BEGIN
                PERFORM pgfleet.worker_link(nodes[i]);
                two_phase := pgfleet.worker_two_phase(nodes[i]);
            EXCEPTION WHEN OTHERS THEN
                states[i] := SQLSTATE;
                messages[i] := SQLERRM;
                reused[i] := false;
            END;
        END IF;
        gids[i] := CASE WHEN two_phase::bool THEN format('pgfleet_xact_%s_%s', me, nodes[i]) END;
    END LOOP;
    SELECT array_agg(b.statements ORDER BY b.node), array_agg(b.prepares ORDER BY b.node) INTO batches, prepares
    FROM pgfleet.link_batches(me) b;
    -- A worker that this transaction already used through postgres_fdw has a remote transaction open
    -- until after this flush: its locks (e.g. a read of the table a queued ALTER changes) would make the
    -- link wait for ever. There the link's transaction waits for a lock at most lock_wait_limit().
    IF EXISTS (SELECT FROM pg_proc WHERE proname = 'postgres_fdw_get_connections' AND 'used_in_xact' = ANY (proargnames)) THEN
        EXECUTE 'SELECT coalesce(array_agg(server_name::text), ''{}'') FROM postgres_fdw_get_connections() WHERE used_in_xact'
            INTO fdw_used;
    ELSE
        EXECUTE 'SELECT coalesce(array_agg(server_name::text), ''{}'') FROM postgres_fdw_get_connections()' INTO fdw_used;
    END IF;
    FOR i IN 1 .. n LOOP
        heads[i] := 'BEGIN ISOLATION LEVEL READ COMMITTED; ' || CASE WHEN links[i] = ANY (fdw_used)
            THEN format('SET LOCAL lock_timeout = %L; ', pgfleet.lock_wait_limit()) ELSE '' END;
    END LOOP;
    -- 1. send each worker its transaction, all before waiting for any
    i := 1;
    WHILE i <= n LOOP
        BEGIN
            WHILE i <= n LOOP
                IF states[i] IS NULL AND dblink_send_query(links[i], heads[i] || batches[i]
                        || '; ' || coalesce(format('PREPARE TRANSACTION %L', gids[i]), 'COMMIT')) <> 1 THEN
                    RAISE EXCEPTION USING ERRCODE = 'connection_failure', MESSAGE = dblink_error_message(links[i]);
                END IF;
                i := i + 1;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            states[i] := SQLSTATE;
            messages[i] := SQLERRM;
            IF links[i] = ANY (coalesce(dblink_get_connections(), '{}')) THEN
                PERFORM dblink_disconnect(links[i]);
            END IF;
            i := i + 1;
        END;
    END LOOP;
    -- 2. collect: one result per statement, then an empty one. A link whose query failed is closed:
    --    the worker rolls back what it had not prepared.
    i := 1;
    WHILE i <= n LOOP
        BEGIN
            WHILE i <= n LOOP
                IF states[i] IS NULL THEN
                    LOOP
                        EXIT WHEN NOT EXISTS (SELECT FROM dblink_get_result(links[i]) AS r(status text));
                    END LOOP;
                END IF;
                i := i + 1;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            states[i] := SQLSTATE;
            messages[i] := SQLERRM;
            PERFORM dblink_disconnect(links[i]);
            i := i + 1;
        END;
    END LOOP;
    -- 3. A link that was open before this transaction may have died since (worker restarted or failed
    --    over), and a link may lack a prepared statement the session believed it had: such a worker
    --    gets a new link and the transaction once more. That is safe: nothing a failed link sent was
    --    committed, and a prepared transaction's name can be used only once.
    FOR i IN 1 .. n LOOP
        CONTINUE WHEN states[i] IS NULL OR NOT ((left(states[i], 2) = '08' AND reused[i]) OR states[i] IN ('26000', '42P05'));
        BEGIN
            PERFORM pgfleet.worker_link(nodes[i], true);
            SELECT b.statements, b.prepares INTO batch, prepared FROM pgfleet.link_batches(me) b WHERE b.node = nodes[i];
            batches[i] := batch;
            prepares[i] := prepared;
            err := pgfleet.link_send(nodes[i], heads[i] || batches[i] || '; '
                                     || coalesce(format('PREPARE TRANSACTION %L', gids[i]), 'COMMIT'), false);
        EXCEPTION WHEN OTHERS THEN
            err := ARRAY[SQLSTATE, SQLERRM];
        END;
        IF err IS NULL THEN
            err := pgfleet.link_wait(nodes[i]);
        END IF;
        states[i] := err[1];
        messages[i] := err[2];
    END LOOP;
    FOR i IN 1 .. n LOOP
        failed := i;
        EXIT WHEN states[i] IS NOT NULL;
        failed := NULL;
    END LOOP;
    IF failed IS NOT NULL THEN
        -- 4a. roll back what was prepared. A worker that cannot be told keeps its prepared transaction
        --     until a link to it opens again; worker_link rolls it back then (this transaction aborted).
        FOR i IN 1 .. n LOOP
            CONTINUE WHEN states[i] IS NOT NULL OR gids[i] IS NULL;
            BEGIN
                PERFORM dblink_exec(links[i], format('ROLLBACK PREPARED %L', gids[i]));
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'pgfleet: could not roll back prepared transaction % on node %: %', gids[i], nodes[i], SQLERRM;
            END;
        END LOOP;
        IF states[failed] = '55P03' AND heads[failed] LIKE '%lock_timeout%' THEN
            RAISE EXCEPTION 'pgfleet: changes could not be applied on node %: they waited more than % for a lock, which this '
                            'transaction''s own earlier statements on that node may hold until COMMIT (%)',
                            nodes[failed], pgfleet.lock_wait_limit(), messages[failed]
                USING ERRCODE = '55P03',
                      HINT = 'Nothing was changed. Commit the statements that read or wrote the table first, then run '
                             'the DDL (or the write) in a transaction of its own.';
        END IF;
        RAISE EXCEPTION 'pgfleet: changes could not be applied on node %: %', nodes[failed], messages[failed]
            USING ERRCODE = states[failed],
                  HINT = 'Nothing was changed on the coordinator or the workers; start the node (pgfleet up / '
                         'pgfleet status) or remove the cause, and run the transaction again.';
    END IF;
    -- The links now have this transaction's prepared statements (kept even if the transaction aborts
    -- later; the setting then reverts, and a repeated PREPARE is caught by step 3).
    FOR i IN 1 .. n LOOP
        IF prepares[i] IS NOT NULL THEN
            PERFORM set_config('pgfleet.prepared_' || nodes[i],
                               coalesce(current_setting('pgfleet.prepared_' || nodes[i], true), '') || prepares[i], false);
        END IF;
    END LOOP;
    DELETE FROM pgfleet.ddl_queue WHERE xid = me;
    -- 4b. every worker has prepared: commit them all (sent to all, then collected)
    i := 1;
    WHILE i <= n LOOP
        BEGIN
            WHILE i <= n LOOP
                IF gids[i] IS NOT NULL THEN
                    IF dblink_send_query(links[i], format('COMMIT PREPARED %L', gids[i])) <> 1 THEN
                        RAISE EXCEPTION USING ERRCODE = 'connection_failure', MESSAGE = dblink_error_message(links[i]);
                    END IF;
                END IF;
                i := i + 1;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            states[i] := SQLSTATE;
            messages[i] := SQLERRM;
            i := i + 1;
        END;
    END LOOP;
    i := 1;
    WHILE i <= n LOOP
        BEGIN
            WHILE i <= n LOOP
                IF gids[i] IS NOT NULL AND states[i] IS NULL THEN
                    LOOP
                        EXIT WHEN NOT EXISTS (SELECT FROM dblink_get_result(links[i]) AS r(status text));
                    END LOOP;
                END IF;
                i := i + 1;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            states[i] := SQLSTATE;
            messages[i] := SQLERRM;
            i := i + 1;
        END;
    END LOOP;
    FOR i IN 1 .. n LOOP
        CONTINUE WHEN gids[i] IS NULL OR states[i] IS NULL;
        -- the worker keeps it prepared; worker_link commits it on the next link
        IF links[i] = ANY (coalesce(dblink_get_connections(), '{}')) THEN
            PERFORM dblink_disconnect(links[i]);
        END IF;
        RAISE WARNING 'pgfleet: node % has not committed prepared transaction % yet: %', nodes[i], gids[i], messages[i]
            USING HINT = 'It is committed when a session next connects to the node.';
    END LOOP;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS flush_ddl ON pgfleet.ddl_queue;
DROP FUNCTION IF EXISTS pgfleet.flush_ddl();
DROP TRIGGER IF EXISTS flush_queue ON pgfleet.ddl_queue;
CREATE CONSTRAINT TRIGGER flush_queue AFTER INSERT ON pgfleet.ddl_queue
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.flush) EXECUTE FUNCTION pgfleet.flush_queue();

-- Codecs are rewritten on every install, so they always follow this version of codec_of().
DELETE FROM pgfleet.row_codecs;
INSERT INTO pgfleet.row_codecs
SELECT (pgfleet.codec_of(t.relid, k)).* FROM pgfleet.tables t CROSS JOIN unnest(ARRAY[true, false]) AS k
WHERE t.method = 'reference';

-- These run SQL on the workers as the catalog's owner: for pgfleet's triggers only.
REVOKE EXECUTE ON FUNCTION pgfleet.worker_link(text, bool), pgfleet.worker_two_phase(text),
    pgfleet.link_wait(text), pgfleet.link_send(text, text, bool), pgfleet.link_batches(xid8),
    pgfleet.queue_for_copies(oid, text, jsonb) FROM PUBLIC;
