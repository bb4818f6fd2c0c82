-- Roles and privileges on the workers, so that a statement the router sends to a shard can run there
-- under the client's role (SET ROLE) with the privileges it has on the coordinator. Installed after
-- catalog.sql by Fleet.install_catalog(). Static SQL; idempotent.
--
-- * Roles: every coordinator role but the predefined pg_* ones exists on each worker, made NOLOGIN there
--   (no password is ever copied; only a superuser session can SET ROLE to it) and marked with the
--   comment 'pgfleet: copy of a coordinator role'. Memberships among them (and in pg_read_all_data /
--   pg_write_all_data) are the coordinator's, with its INHERIT option. A copy whose coordinator role is
--   gone is dropped; a membership of a copy that the coordinator no longer has is revoked. Roles that
--   existed on a worker before (not marked) are used as they are and never altered or dropped.
--   Roles fire no event trigger, so role_sync_sql() is applied: when a table is distributed or made a
--   reference table, with every change of a table's privileges (below), and by the router whenever the
--   coordinator's roles change (Fleet.sync_roles).
-- * Privileges: a distributed or reference table's owner, table privileges and column privileges are
--   copied to each of its shard tables (privileges_sql): at distribute time, and at COMMIT of every
--   GRANT, REVOKE, ALTER TABLE (OWNER TO) and DROP OWNED that changed them (the event trigger compares
--   acl_signature()), in the same two-phase commit as DDL. REASSIGN OWNED fires no event trigger: what
--   it changed is found by the same comparison in Fleet.sync_roles (which the router runs).

CREATE OR REPLACE FUNCTION pgfleet.role_marker() RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT 'pgfleet: copy of a coordinator role' $$;

-- The coordinator's roles and memberships, as the workers should have them.
CREATE OR REPLACE FUNCTION pgfleet.roles_spec() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object(
        'roles', coalesce((SELECT jsonb_agg(rolname::text ORDER BY rolname) FROM pg_roles WHERE rolname !~ '^pg_'), '[]'),
        'members', coalesce((
            SELECT jsonb_agg(jsonb_build_object('role', role, 'member', member, 'inherit', inherit) ORDER BY role, member)
            FROM (SELECT g.rolname::text AS role, m.rolname::text AS member, bool_or(am.inherit_option) AS inherit
                  FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
                  WHERE m.rolname !~ '^pg_' AND (g.rolname !~ '^pg_' OR g.rolname IN ('pg_read_all_data', 'pg_write_all_data'))
                  GROUP BY 1, 2) x), '[]'))
$$;

-- One statement (a DO block) that makes a worker's roles and memberships what the coordinator has.
-- It runs on the worker as pgfleet's account; without CREATEROLE there it changes nothing (a NOTICE).
CREATE OR REPLACE FUNCTION pgfleet.role_sync_sql() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    SELECT format('DO %L', format($body$
DECLARE
    spec jsonb := %L;
    marker constant text := %L;
    me oid := (SELECT oid FROM pg_roles WHERE rolname = current_user);
    r record;
BEGIN
    IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE oid = me) THEN
        RAISE NOTICE 'pgfleet: %% may not create roles on this worker: roles are not copied', current_user;
        RETURN;
    END IF;
    FOR r IN SELECT e #>> '{}' AS name FROM jsonb_array_elements(spec->'roles') e
             WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = e #>> '{}') LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %%I NOLOGIN', r.name);
            EXECUTE format('COMMENT ON ROLE %%I IS %%L', r.name, marker);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- made by a concurrent commit (the
        END;                                                            -- second waits, then meets the index)
    END LOOP;
    FOR r IN SELECT e->>'role' AS role, e->>'member' AS member, (e->>'inherit')::bool AS inherit
             FROM jsonb_array_elements(spec->'members') e
             WHERE NOT EXISTS (SELECT FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid
                               JOIN pg_roles m ON m.oid = am.member
                               WHERE g.rolname = e->>'role' AND m.rolname = e->>'member'
                                 AND am.inherit_option = (e->>'inherit')::bool) LOOP
        BEGIN
            EXECUTE format('GRANT %%I TO %%I WITH INHERIT %%s', r.role, r.member, CASE WHEN r.inherit THEN 'TRUE' ELSE 'FALSE' END);
        EXCEPTION WHEN unique_violation THEN NULL;  -- granted by a concurrent commit
        END;
    END LOOP;
    FOR r IN SELECT g.rolname AS role, m.rolname AS member, gr.rolname AS grantor
             FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
             JOIN pg_roles gr ON gr.oid = am.grantor
             WHERE shobj_description(m.oid, 'pg_authid') = marker AND am.grantor IN (me, 10)
               AND NOT EXISTS (SELECT FROM jsonb_array_elements(spec->'members') e
                               WHERE e->>'role' = g.rolname AND e->>'member' = m.rolname) LOOP
        EXECUTE format('REVOKE %%I FROM %%I GRANTED BY %%I', r.role, r.member, r.grantor);
    END LOOP;
    FOR r IN SELECT rolname AS name FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = marker
             AND NOT EXISTS (SELECT FROM jsonb_array_elements(spec->'roles') e WHERE e #>> '{}' = rolname) LOOP
        BEGIN
            EXECUTE format('REASSIGN OWNED BY %%I TO %%I', r.name, current_user);
            EXECUTE format('DROP OWNED BY %%I', r.name);
            EXECUTE format('DROP ROLE %%I', r.name);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pgfleet: could not drop the copy of role %%: %%', r.name, SQLERRM;
        END;
    END LOOP;
END
$body$, pgfleet.roles_spec()::text, pgfleet.role_marker()))
$$;

-- Owner, table and column privileges of p_relid, as a fingerprint (the event trigger compares it with
-- pgfleet.tables.acl_signature) and as data for privileges_sql().
CREATE OR REPLACE FUNCTION pgfleet.acl_signature(p_relid oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT md5(concat_ws('|', pg_get_userbyid(c.relowner), c.relacl::text,
                         (SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL AND NOT a.attisdropped),
                         'schema', n.nspacl::text))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_relid
$$;

-- A fingerprint of roles_spec(), and whether some table's privileges differ from those its shards got
-- (REASSIGN OWNED): the router runs Fleet.sync_roles when either changes.
CREATE OR REPLACE FUNCTION pgfleet.roles_fingerprint() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    SELECT md5(pgfleet.roles_spec()::text)
           || CASE WHEN EXISTS (SELECT FROM pgfleet.tables WHERE acl_signature IS DISTINCT FROM pgfleet.acl_signature(relid))
                   THEN '+privileges' ELSE '' END
$$;

CREATE OR REPLACE FUNCTION pgfleet.acl_spec(p_relid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT jsonb_build_object(
        'owner', pg_get_userbyid(c.relowner),
        'usage', coalesce((  -- roles with USAGE on the table's schema
            SELECT jsonb_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END)
            FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
            WHERE n.oid = c.relnamespace AND a.privilege_type = 'USAGE' AND a.grantee <> n.nspowner), '[]'),
        'grants', coalesce((
            SELECT jsonb_agg(jsonb_build_object('grantee', CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END,
                                                'role', CASE WHEN x.grantee = 0 THEN NULL ELSE pg_get_userbyid(x.grantee) END,
                                                'privilege', x.privilege_type, 'grantable', x.is_grantable,
                                                'column', x.attname) ORDER BY x.attname NULLS FIRST, x.grantee, x.privilege_type)
            FROM (SELECT a.grantee, a.privilege_type, a.is_grantable, NULL::text AS attname
                  FROM aclexplode(c.relacl) a
                  UNION ALL
                  SELECT a.grantee, a.privilege_type, a.is_grantable, att.attname::text
                  FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a
                  WHERE att.attrelid = c.oid AND att.attacl IS NOT NULL AND NOT att.attisdropped) x
            WHERE x.grantee <> c.relowner), '[]'))
    FROM pg_class c WHERE c.oid = p_relid
$$;

-- One statement (a DO block) that gives the shard table p_schema.p_table the owner, table privileges and
-- column privileges that p_relid has on the coordinator: every privilege granted there before is revoked
-- first. Grantees that do not exist on the worker (roles not copied) and privileges the worker's
-- version does not know are left out.
CREATE OR REPLACE FUNCTION pgfleet.privileges_sql(p_relid oid, p_schema text, p_table text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pgfleet AS $$
    SELECT format('DO %L', format($body$
DECLARE
    spec jsonb := %L;
    tbl constant text := %L;
    rel oid := tbl::regclass;
    g record;
BEGIN
    IF to_regrole(quote_ident(spec->>'owner')) IS NOT NULL
       AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = rel) <> spec->>'owner' THEN
        EXECUTE format('ALTER TABLE %%s OWNER TO %%I', tbl, spec->>'owner');
    END IF;
    -- USAGE on the schema as on the coordinator, for the coordinator's roles (a worker's own roles keep theirs)
    FOR g IN SELECT a.grantee FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
             WHERE n.oid = (SELECT relnamespace FROM pg_class WHERE oid = rel) AND a.privilege_type = 'USAGE'
               AND a.grantee <> n.nspowner
               AND (a.grantee = 0 OR shobj_description(a.grantee, 'pg_authid') = %L)
               AND NOT (spec->'usage') ? CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END LOOP
        EXECUTE format('REVOKE USAGE ON SCHEMA %%I FROM %%s', %L,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
    FOR g IN SELECT e #>> '{}' AS grantee FROM jsonb_array_elements(spec->'usage') e
             WHERE e #>> '{}' = 'PUBLIC' OR to_regrole(quote_ident(e #>> '{}')) IS NOT NULL LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %%I TO %%s', %L,
                       CASE WHEN g.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(g.grantee) END);
    END LOOP;
    FOR g IN SELECT DISTINCT a.grantee
             FROM (SELECT relacl AS acl, relowner FROM pg_class WHERE oid = rel
                   UNION ALL
                   SELECT attacl, (SELECT relowner FROM pg_class WHERE oid = rel)
                   FROM pg_attribute WHERE attrelid = rel AND attacl IS NOT NULL) x
             CROSS JOIN LATERAL aclexplode(x.acl) a WHERE a.grantee <> x.relowner LOOP
        EXECUTE format('REVOKE ALL ON TABLE %%s FROM %%s', tbl,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
    FOR g IN SELECT e->>'grantee' AS grantee, e->>'privilege' AS privilege, (e->>'grantable')::bool AS grantable,
                    e->>'column' AS col
             FROM jsonb_array_elements(spec->'grants') e
             WHERE (e->>'role' IS NULL OR to_regrole(quote_ident(e->>'role')) IS NOT NULL)
               AND (e->>'privilege' <> 'MAINTAIN' OR current_setting('server_version_num')::int >= 170000) LOOP
        EXECUTE format('GRANT %%s%%s ON TABLE %%s TO %%s%%s', g.privilege,
                       CASE WHEN g.col IS NULL THEN '' ELSE format(' (%%I)', g.col) END, tbl, g.grantee,
                       CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$body$, pgfleet.acl_spec(p_relid)::text, format('%I.%I', p_schema, p_table), pgfleet.role_marker(), p_schema, p_schema))
$$;

-- Queue, for p_relid's shards, the role sync (once per worker and transaction) and the privileges, and
-- remember the signature they were taken from.
CREATE OR REPLACE FUNCTION pgfleet.queue_privileges(p_relid oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    sh record;
    roles text := pgfleet.role_sync_sql();
BEGIN
    FOR sh IN SELECT * FROM pgfleet.shards WHERE relid = p_relid ORDER BY node, shard_id LOOP
        IF NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id() AND node = sh.node
                                                        AND statement = roles) THEN
            INSERT INTO pgfleet.ddl_queue (node, statement, flush)
            VALUES (sh.node, roles, NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id()));
        END IF;
        INSERT INTO pgfleet.ddl_queue (node, statement, flush)
        VALUES (sh.node, pgfleet.privileges_sql(p_relid, sh.shard_schema, sh.shard_table),
                NOT EXISTS (SELECT FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id()));
    END LOOP;
    UPDATE pgfleet.tables SET acl_signature = pgfleet.acl_signature(p_relid) WHERE relid = p_relid;
END $$;

-- Called by the DDL trigger after GRANT, REVOKE, ALTER TABLE, DROP OWNED, and by Fleet.sync_roles: queue the
-- privileges of every distributed or reference table whose owner or privileges changed.
CREATE OR REPLACE FUNCTION pgfleet.queue_changed_privileges() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    t oid;
BEGIN
    FOR t IN SELECT relid FROM pgfleet.tables
             WHERE acl_signature IS DISTINCT FROM pgfleet.acl_signature(relid) ORDER BY relid LOOP
        PERFORM pgfleet.queue_privileges(t);
    END LOOP;
END $$;

-- Give p_new the table and column privileges of p_old (with their grant options), grantors aside:
-- distribute and undistribute replace a table by another.
CREATE OR REPLACE FUNCTION pgfleet.copy_privileges(p_old oid, p_new oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT e->>'grantee' AS grantee, e->>'privilege' AS privilege, (e->>'grantable')::bool AS grantable,
                    e->>'column' AS col
             FROM jsonb_array_elements(pgfleet.acl_spec(p_old)->'grants') e LOOP
        EXECUTE format('GRANT %s%s ON TABLE %s TO %s%s', g.privilege,
                       CASE WHEN g.col IS NULL THEN '' ELSE format(' (%I)', g.col) END, p_new::regclass, g.grantee,
                       CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;
