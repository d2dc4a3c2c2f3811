-- Row-level security: a second wall behind every statement's own
-- `workspace_id = $1`. segd runs each call's statements as `segd_app`, a
-- role without BYPASSRLS, with the call's workspace in the setting
-- `segd.workspace`; a statement that forgot its workspace condition still
-- sees, and may write, only that workspace's rows, and one run without the
-- setting fails. The owner (this migration's user: migrations, and the
-- maintenance that spans workspaces) is not subject to the policies.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'segd_app') THEN
        CREATE ROLE segd_app NOLOGIN NOINHERIT NOBYPASSRLS;
    END IF;
    IF NOT pg_has_role(current_user, 'segd_app', 'MEMBER') THEN
        EXECUTE format('GRANT segd_app TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'segd needs the role segd_app, granted to %', current_user
        USING HINT = format('As a superuser or a role with CREATEROLE: CREATE ROLE segd_app NOLOGIN NOINHERIT; GRANT segd_app TO %I;', current_user);
END
$$;

GRANT USAGE ON SCHEMA public TO segd_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO segd_app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO segd_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO segd_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO segd_app;

-- Every table of a workspace's data. USING also checks written rows.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'labels', 'custom_fields', 'contacts', 'events', 'deals', 'segments',
        'segment_refs', 'segment_members', 'feed_offsets', 'change_queue',
        'live_members', 'live_state', 'membership_changes', 'contact_changes',
        'segment_rollups', 'metrics_settings', 'workspaces'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY workspace_scope ON %I USING (workspace_id = current_setting(''segd.workspace'')::bigint)',
            t
        );
    END LOOP;
END
$$;

-- Under a policy PostgreSQL uses an index only for a test whose function is
-- LEAKPROOF; the array tests of tags and labels (&&, @>) are not marked so,
-- and segments on them would scan the workspace instead of the GIN indexes
-- (measured: 0.23 s against 0.89 s for 10k of 1M contacts in a 3M table).
-- The mark is about callers who write their own SQL against a policy, which
-- segd's callers cannot. Only a superuser can set it; others keep the
-- slower plans (docs/operating.md says how to set it).
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION arrayoverlap(anyarray, anyarray) LEAKPROOF;
        ALTER FUNCTION arraycontains(anyarray, anyarray) LEAKPROOF;
    ELSE
        RAISE NOTICE 'not a superuser: tag and label tests cannot use their GIN indexes under row-level security (see docs/operating.md)';
    END IF;
END
$$;
