-- Segment metrics: which event types count as an open, a click, a purchase
-- and revenue, per workspace (no row: the built-in types); and what tells
-- whether a live segment's membership at a past instant can be read back
-- from the change feed (retention).
CREATE TABLE metrics_settings (
    workspace_id   bigint PRIMARY KEY REFERENCES workspaces ON DELETE CASCADE,
    open_types     text[] NOT NULL,
    click_types    text[] NOT NULL,
    purchase_types text[] NOT NULL,
    revenue_types  text[] NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- When the stored membership was first built (reset when a segment stops
-- being live): the feed holds every change since.
ALTER TABLE live_state ADD COLUMN first_built_at timestamptz;
-- The time of the newest change the feed's retention dropped: membership
-- at any later instant can be rebuilt from the feed.
ALTER TABLE feed_offsets ADD COLUMN trimmed_through timestamptz;
