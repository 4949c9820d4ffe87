-- ferry's DDL trigger for a PostgreSQL source: carries column and table renames and dropped
-- tables into the replication stream, in the transaction that made them, as logical decoding
-- messages (prefix 'ferry.ddl'). Installed by `ferry ddl-trigger install`; needs a superuser
-- (creating an event trigger does, on PostgreSQL 15). Never makes the application's DDL fail:
-- every error inside is turned into a WARNING (and, where it can, an 'unknown' message that
-- makes ferry stop on an ambiguous change of that table rather than guess).
--
-- State: the column names by attnum, and the name, of every table, in two UNLOGGED tables (no
-- WAL, never published). A rename is the same attnum (or table OID) under a new name.
--
-- Order: logical decoding places a transactional message at its record's END, which is where the
-- next record starts; when that record belongs to another (sub)transaction (the exception blocks
-- below are subtransactions, and so is an application's savepoint), the two compare equal and
-- may be decoded in either order. So each batch of messages ends with a 'fence' message, which
-- ferry ignores: the messages before it then end strictly before any later change.

CREATE SCHEMA IF NOT EXISTS ferry;
CREATE UNLOGGED TABLE IF NOT EXISTS ferry.ddl_tables (
    relid oid PRIMARY KEY, nspname name NOT NULL, relname name NOT NULL);
CREATE UNLOGGED TABLE IF NOT EXISTS ferry.ddl_columns (
    relid oid, attnum int2, attname name NOT NULL, PRIMARY KEY (relid, attnum));

CREATE OR REPLACE FUNCTION ferry.ddl_remember(rel oid) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $fn$
    DELETE FROM ferry.ddl_tables WHERE relid = rel;
    DELETE FROM ferry.ddl_columns WHERE relid = rel;
    INSERT INTO ferry.ddl_tables
        SELECT c.oid, n.nspname, c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    INSERT INTO ferry.ddl_columns
        SELECT attrelid, attnum, attname FROM pg_attribute
        WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped;
$fn$;

CREATE OR REPLACE FUNCTION ferry.ddl_emit(kind text, rel oid, body json) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT pg_logical_emit_message(true, 'ferry.ddl',
        (json_build_object('kind', kind, 'relid', rel)::jsonb || body::jsonb)::text)
$fn$;

CREATE OR REPLACE FUNCTION ferry.ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    cmd record;
    old_t record;
    r record;
    any_cmd boolean := false;
BEGIN
    FOR cmd IN
        SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
        WHERE classid = 'pg_class'::regclass AND object_type IN ('table', 'table column')
          AND schema_name IS DISTINCT FROM 'ferry' AND NOT in_extension
    LOOP
        any_cmd := true;
        BEGIN
            SELECT * INTO old_t FROM ferry.ddl_tables WHERE relid = cmd.objid;
            IF FOUND THEN
                FOR r IN
                    SELECT n.nspname, c.relname FROM pg_class c
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = cmd.objid
                      AND (n.nspname, c.relname) IS DISTINCT FROM (old_t.nspname, old_t.relname)
                LOOP
                    PERFORM ferry.ddl_emit('rename_table', cmd.objid, json_build_object(
                        'from', json_build_array(old_t.nspname, old_t.relname),
                        'to', json_build_array(r.nspname, r.relname)));
                END LOOP;
                FOR r IN
                    SELECT o.attname AS old_name, a.attname AS new_name, n.nspname, c.relname
                    FROM ferry.ddl_columns o
                    JOIN pg_attribute a ON a.attrelid = o.relid AND a.attnum = o.attnum
                    JOIN pg_class c ON c.oid = o.relid
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE o.relid = cmd.objid AND NOT a.attisdropped AND a.attname <> o.attname
                    ORDER BY o.attnum
                LOOP
                    PERFORM ferry.ddl_emit('rename_column', cmd.objid, json_build_object(
                        'table', json_build_array(r.nspname, r.relname),
                        'from', r.old_name, 'to', r.new_name));
                END LOOP;
            ELSE
                -- No state for this table (new, or the state was lost): what it was is unknown.
                PERFORM ferry.ddl_emit('unknown', cmd.objid, '{}'::json);
            END IF;
            PERFORM ferry.ddl_remember(cmd.objid);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'ferry DDL trigger: %', SQLERRM;
            BEGIN
                PERFORM ferry.ddl_emit('unknown', cmd.objid,
                    json_build_object('error', SQLERRM));
            EXCEPTION WHEN OTHERS THEN NULL;
            END;
        END;
    END LOOP;
    IF any_cmd THEN
        PERFORM ferry.ddl_emit('fence', 0, '{}'::json);
    END IF;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'ferry DDL trigger: %', SQLERRM;
END
$fn$;

CREATE OR REPLACE FUNCTION ferry.ddl_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    obj record;
    any_obj boolean := false;
BEGIN
    FOR obj IN
        SELECT * FROM pg_event_trigger_dropped_objects()
        WHERE object_type = 'table' AND NOT is_temporary
          AND schema_name IS DISTINCT FROM 'ferry'
    LOOP
        any_obj := true;
        BEGIN
            PERFORM ferry.ddl_emit('drop_table', obj.objid, json_build_object(
                'table', json_build_array(obj.schema_name, obj.object_name)));
            DELETE FROM ferry.ddl_tables WHERE relid = obj.objid;
            DELETE FROM ferry.ddl_columns WHERE relid = obj.objid;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'ferry DDL trigger: %', SQLERRM;
        END;
    END LOOP;
    IF any_obj THEN
        PERFORM ferry.ddl_emit('fence', 0, '{}'::json);
    END IF;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'ferry DDL trigger: %', SQLERRM;
END
$fn$;

REVOKE ALL ON FUNCTION ferry.ddl_command_end(), ferry.ddl_sql_drop(),
    ferry.ddl_remember(oid), ferry.ddl_emit(text, oid, json) FROM PUBLIC;

DROP EVENT TRIGGER IF EXISTS ferry_ddl_command_end;
CREATE EVENT TRIGGER ferry_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION ferry.ddl_command_end();
DROP EVENT TRIGGER IF EXISTS ferry_sql_drop;
CREATE EVENT TRIGGER ferry_sql_drop ON sql_drop EXECUTE FUNCTION ferry.ddl_sql_drop();

-- The tables that exist now.
SELECT ferry.ddl_remember(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ferry')
  AND n.nspname NOT LIKE 'pg\_toast%';
