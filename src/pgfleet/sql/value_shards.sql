-- Range and list distributions for the SQL API (pgfleet.distribute_table's bounds and lists, migrations.sql):
-- the shards, checked in the key's type with the CLI's rules and words (spec/distribution.py).

-- p_bounds as the CLI's --bounds: ascending values of the key, 'min' first and 'max' last for open ends;
-- p_lists as its --list VALUES=NODE: {"node": [value, …], …}. Ranges go round-robin over p_workers.
DO $$ BEGIN
    CREATE TYPE pgfleet.value_shard AS (shard_index int, shard_node text, lower_bound text, upper_bound text,
                                        list_values text[]);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE OR REPLACE FUNCTION pgfleet.api_value_shards(p_key_type regtype, p_bounds text[], p_lists jsonb, p_workers text[])
RETURNS SETOF pgfleet.value_shard
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
DECLARE
    r pgfleet.value_shard;
    order_hint constant text := 'list the bounds in ascending order, each once, e.g. ARRAY[''min'', ''1000'', ''2000'', ''max'']';
    n int;
    b text;
    prev text;
    i int;
    ascending bool;
    site record;
    every_value text[] := '{}';
BEGIN
    IF p_bounds IS NOT NULL THEN
        n := cardinality(p_bounds);
        IF n IS NULL OR n < 2 THEN
            RAISE EXCEPTION 'a range distribution needs at least two bounds' USING ERRCODE = 'invalid_parameter_value',
                HINT = order_hint;
        END IF;
        FOR i IN 1 .. n LOOP
            b := p_bounds[i];
            IF b IS NULL OR btrim(b) = '' THEN
                RAISE EXCEPTION 'range bound % is empty', i USING ERRCODE = 'invalid_parameter_value', HINT = order_hint;
            ELSIF lower(b) IN ('min', 'minvalue') THEN
                IF i <> 1 THEN
                    RAISE EXCEPTION 'bad range bounds: min may only come first' USING ERRCODE = 'invalid_parameter_value',
                        HINT = order_hint;
                END IF;
            ELSIF lower(b) IN ('max', 'maxvalue') THEN
                IF i <> n THEN
                    RAISE EXCEPTION 'bad range bounds: max may only come last' USING ERRCODE = 'invalid_parameter_value',
                        HINT = order_hint;
                END IF;
            ELSE
                PERFORM pgfleet.api_check_value(b, p_key_type, 'range bound');
                IF prev IS NOT NULL THEN
                    EXECUTE format('SELECT %L::%s < %L::%s', prev, p_key_type, b, p_key_type) INTO ascending;
                    IF NOT ascending THEN
                        RAISE EXCEPTION 'range bounds are not ascending: % comes before %', prev, b
                            USING ERRCODE = 'invalid_parameter_value', HINT = order_hint;
                    END IF;
                END IF;
                prev := b;
            END IF;
        END LOOP;
        FOR i IN 1 .. n - 1 LOOP
            r.shard_index := i - 1;
            r.shard_node := p_workers[(i - 1) % cardinality(p_workers) + 1];
            r.lower_bound := CASE WHEN lower(p_bounds[i]) IN ('min', 'minvalue') THEN NULL ELSE p_bounds[i] END;
            r.upper_bound := CASE WHEN lower(p_bounds[i + 1]) IN ('max', 'maxvalue') THEN NULL ELSE p_bounds[i + 1] END;
            r.list_values := NULL;
            RETURN NEXT r;
        END LOOP;
        RETURN;
    END IF;
    IF jsonb_typeof(p_lists) IS DISTINCT FROM 'object' OR p_lists = '{}' THEN
        RAISE EXCEPTION 'lists must be a JSON object from worker to its values' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'e.g. lists => ''{"w1": ["paris"], "w2": ["lagos", "abuja"]}''';
    END IF;
    i := 0;
    FOR site IN SELECT key, value FROM jsonb_each(p_lists) ORDER BY key LOOP
        IF NOT site.key = ANY (p_workers) THEN
            RAISE EXCEPTION 'unknown worker % in lists', site.key USING ERRCODE = 'invalid_parameter_value',
                HINT = format('workers are: %s', array_to_string(p_workers, ', '));
        END IF;
        IF jsonb_typeof(site.value) <> 'array' OR jsonb_array_length(site.value) = 0
           OR EXISTS (SELECT FROM jsonb_array_elements(site.value) v WHERE jsonb_typeof(v) NOT IN ('string', 'number')) THEN
            RAISE EXCEPTION 'the values of % must be a non-empty array of strings or numbers', site.key
                USING ERRCODE = 'invalid_parameter_value', HINT = 'e.g. "w2": ["lagos", "abuja"]';
        END IF;
        r.shard_index := i;
        r.shard_node := site.key;
        r.lower_bound := NULL;
        r.upper_bound := NULL;
        r.list_values := ARRAY(SELECT v #>> '{}' FROM jsonb_array_elements(site.value) v);
        FOREACH b IN ARRAY r.list_values LOOP
            PERFORM pgfleet.api_check_value(b, p_key_type, 'list value');
        END LOOP;
        every_value := every_value || r.list_values;
        RETURN NEXT r;
        i := i + 1;
    END LOOP;
    -- each value belongs to one site, also when spelled differently (01 and 1 for an integer key)
    EXECUTE format('SELECT string_agg(quote_literal(v), '' and '') FROM (SELECT v, count(*) OVER (PARTITION BY v::%s) AS c '
                   'FROM unnest($1) v) x WHERE c > 1', p_key_type) INTO b USING every_value;
    IF b IS NOT NULL THEN
        RAISE EXCEPTION 'list values % are the same value of the key', b USING ERRCODE = 'invalid_parameter_value',
            HINT = 'each value belongs to one site; give it once';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION pgfleet.api_check_value(p_value text, p_key_type regtype, p_what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pgfleet AS $$
BEGIN
    EXECUTE format('SELECT %L::%s', p_value, p_key_type);
EXCEPTION WHEN data_exception THEN
    RAISE EXCEPTION '% % is not a value of the key''s type %: %', p_what, quote_literal(p_value), p_key_type, SQLERRM
        USING ERRCODE = 'invalid_parameter_value', HINT = format('give values of type %s, as text', p_key_type);
END $$;

-- The partition bound and the shard's own rule (its CHECK on the worker) of one range or list shard.
CREATE OR REPLACE FUNCTION pgfleet.value_bound(p_lower text, p_upper text, p_values text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_values IS NOT NULL
                THEN format('FOR VALUES IN (%s)', (SELECT string_agg(quote_literal(v), ', ') FROM unnest(p_values) v))
                ELSE format('FOR VALUES FROM (%s) TO (%s)', coalesce(quote_literal(p_lower), 'MINVALUE'),
                            coalesce(quote_literal(p_upper), 'MAXVALUE')) END
$$;

CREATE OR REPLACE FUNCTION pgfleet.value_rule(p_key text, p_lower text, p_upper text, p_values text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_values IS NOT NULL
                THEN format('%I IN (%s)', p_key, (SELECT string_agg(quote_literal(v), ', ') FROM unnest(p_values) v))
                ELSE coalesce(nullif(concat_ws(' AND ', CASE WHEN p_lower IS NOT NULL THEN format('%I >= %L', p_key, p_lower) END,
                                               CASE WHEN p_upper IS NOT NULL THEN format('%I < %L', p_key, p_upper) END), ''),
                              'true') END
$$;
