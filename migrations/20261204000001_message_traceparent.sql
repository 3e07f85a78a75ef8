-- The trace context of the SendMessage that created a message (W3C traceparent), so that
-- what is published for it later outside any of its requests (the queue reporter's
-- generation_queued) joins that message's trace.
ALTER TABLE messages ADD COLUMN traceparent text;
