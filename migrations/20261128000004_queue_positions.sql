-- The queue reporter (services/conversation/src/queue.rs) tells each queued message's owner
-- how many messages are ahead of it (generation_queued), and again when that changes.

-- The position last published for the message, so a run reports only a change, and two
-- replicas never publish the same position twice. NULL: never reported.
ALTER TABLE messages ADD COLUMN queue_position integer CHECK (queue_position >= 0);
-- When that position was published: a change is reported at most once per interval.
ALTER TABLE messages ADD COLUMN queue_reported_at timestamptz;

-- The queue itself: queued messages in FIFO order (the job stream's order). The reporter
-- ranks them with a window function over this index; finished messages, the vast majority
-- of the table, are not in it.
CREATE INDEX messages_queued ON messages (created_at, id) WHERE status = 'queued';

-- The message whose SendMessage wrote the row (NULL for every other row). The reporter
-- skips a message while one of these is unpublished, so its generation_queued never
-- reaches the user's stream before its message_created.
ALTER TABLE outbox ADD COLUMN message_id uuid;

-- That check, per queued message: only unpublished rows of a message are indexed, so the
-- index stays as small as the relay's backlog.
CREATE INDEX outbox_unpublished_by_message ON outbox (message_id)
    WHERE published_at IS NULL AND message_id IS NOT NULL;
