-- Live segments' size over time: hourly rollups of entries and exits, kept
-- apart from the change feed so that history outlives its retention.
CREATE TABLE segment_rollups (
    workspace_id bigint NOT NULL,
    segment_id   bigint NOT NULL,
    -- Start of the hour (by the maintainer's clock).
    hour         timestamptz NOT NULL,
    entered      bigint NOT NULL DEFAULT 0,
    exited       bigint NOT NULL DEFAULT 0,
    -- Members after the hour's last change.
    size         bigint NOT NULL,
    PRIMARY KEY (workspace_id, segment_id, hour),
    FOREIGN KEY (workspace_id, segment_id) REFERENCES segments ON DELETE CASCADE
);
