-- Foreign keys between two tables that one migration creates and then distributes (Django and SQLAlchemy
-- declare the key with the tables). Distributing the referenced table first would leave a plain table's
-- key pointing at a partitioned table of foreign partitions, which PostgreSQL refuses. So
-- pgfleet.distribute_table parks such a key here (and drops it on the coordinator); distributing the
-- referencing table in the same transaction, co-located on the key, takes it to the shards as its own
-- keys are taken. At COMMIT, before anything reaches the workers, flush_queue (worker_writes.sql) fails a
-- transaction that left a key parked: the rollback brings back both tables and the key as they were.
CREATE TABLE IF NOT EXISTS pgfleet.parked_foreign_keys (
    fk         pgfleet.foreign_keys NOT NULL,
    referenced text NOT NULL  -- the referenced table's name, for the message
);

-- Park the keys of plain tables (owned by the session's user too) that reference p_relid.
CREATE OR REPLACE FUNCTION pgfleet.park_referencing_keys(p_relid oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    c record;
    fk pgfleet.foreign_keys;
    internal text := coalesce(current_setting('pgfleet.internal', true), '');
BEGIN
    FOR c IN SELECT f.conrelid, f.conname::text AS conname FROM pg_constraint f JOIN pg_class r ON r.oid = f.conrelid
             WHERE f.contype = 'f' AND f.confrelid = p_relid AND f.conrelid <> p_relid AND r.relkind = 'r'
               AND NOT EXISTS (SELECT FROM pgfleet.tables t WHERE t.relid = f.conrelid)
               AND pg_has_role(session_user, r.relowner, 'MEMBER')  -- else the refusal of check_table_shape
             ORDER BY f.conrelid, f.conname LOOP
        SELECT * INTO STRICT fk FROM pgfleet.foreign_keys_of(c.conrelid) k WHERE k.name = c.conname;
        INSERT INTO pgfleet.parked_foreign_keys (fk, referenced) VALUES (fk, p_relid::regclass::text);
        PERFORM set_config('pgfleet.internal', 'on', true);
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname);
        PERFORM set_config('pgfleet.internal', internal, true);
    END LOOP;
END $$;

-- At COMMIT (flush_queue): a key still parked fails the transaction, naming what would complete it.
CREATE OR REPLACE FUNCTION pgfleet.check_parked_keys() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    p record;
BEGIN
    SELECT (k.fk).name AS name, (k.fk).relid::regclass::text AS tbl, (k.fk).columns AS columns, k.referenced
    INTO p FROM pgfleet.parked_foreign_keys k ORDER BY 2, 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'foreign key % of % references %, which this transaction distributed, but % was not '
                        'distributed with it', p.name, p.tbl, p.referenced, p.tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('in the same transaction: SELECT pgfleet.distribute_table(%L, %L, colocate_with => %L)',
                                p.tbl, p.columns[1], p.referenced);
    END IF;
END $$;
