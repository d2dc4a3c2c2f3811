-- Live segments: the queue of contact changes every write appends to in its
-- own transaction, stored membership and its state, and the change feed.

-- A live segment's membership is maintained as contacts change.
ALTER TABLE segments ADD COLUMN live boolean NOT NULL DEFAULT false;
UPDATE segments SET live = true WHERE builtin;

-- The last offset of each workspace's change feed. Apart from workspaces,
-- whose row every foreign key check locks: a REPEATABLE READ writer would
-- otherwise fail on each offset update.
CREATE TABLE feed_offsets (
    workspace_id bigint PRIMARY KEY REFERENCES workspaces ON DELETE CASCADE,
    last         bigint NOT NULL DEFAULT 0
);

-- What writes changed, not yet applied to live memberships. One row per
-- write (a batch is one write): the contacts, and what about them changed
-- (dependency keys such as 'col:country', 'tag', 'attr:plan', 'sub:email',
-- 'ev:purchase', 'deal', 'seg:12', or '*' for anything). contact_ids NULL
-- means every contact (a definition changed: rebuild what reads it).
CREATE TABLE change_queue (
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    contact_ids  bigint[],
    keys         text[] NOT NULL,
    cause        text NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workspace_id, seq)
);

-- Stored membership of live segments. No foreign key to contacts: a deleted
-- contact leaves through the queue, so its exit reaches the feed.
CREATE TABLE live_members (
    workspace_id bigint NOT NULL,
    segment_id   bigint NOT NULL,
    contact_id   bigint NOT NULL,
    PRIMARY KEY (workspace_id, segment_id, contact_id),
    FOREIGN KEY (workspace_id, segment_id) REFERENCES segments ON DELETE CASCADE
);

-- Maintenance state of each live segment.
CREATE TABLE live_state (
    workspace_id  bigint NOT NULL,
    segment_id    bigint NOT NULL,
    -- The definition version the stored membership reflects; NULL until
    -- the first build.
    built_version bigint,
    size          bigint NOT NULL DEFAULT 0,
    changed_at    timestamptz,
    -- Whether time alone moves its members (windows, relative dates), and
    -- when it was last evaluated over every contact.
    timed         boolean NOT NULL DEFAULT false,
    evaluated_at  timestamptz,
    eval_ms       double precision,
    -- Time spent refreshing it, in all.
    eval_ms_total double precision NOT NULL DEFAULT 0,
    last_error    text,
    PRIMARY KEY (workspace_id, segment_id),
    FOREIGN KEY (workspace_id, segment_id) REFERENCES segments ON DELETE CASCADE
);

-- Every entry and exit, by offset (gapless per workspace).
CREATE TABLE membership_changes (
    workspace_id bigint NOT NULL REFERENCES workspaces ON DELETE CASCADE,
    "offset"     bigint NOT NULL,
    segment_id   bigint NOT NULL,
    contact_id   bigint NOT NULL,
    entered      boolean NOT NULL,
    cause        text NOT NULL,
    at           timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, "offset")
);
