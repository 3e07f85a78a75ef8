-- The reaper (services/conversation/src/reaper.rs) settles messages the pipeline lost:
-- how many times it acted on a message (1: its job was published again; 2: its images
-- were failed and refunded), and when last.
ALTER TABLE messages ADD COLUMN reap_count smallint NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN reaped_at timestamptz;

-- Its question, every interval: the unfinished messages unchanged the longest. Finished
-- messages, nearly all of the table, are not in the index.
CREATE INDEX messages_unfinished_by_update ON messages (updated_at)
    WHERE status IN ('queued', 'processing');
