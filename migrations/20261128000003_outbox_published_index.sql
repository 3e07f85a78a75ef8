-- The sweeper deletes rows published more than a day ago on every tick: index exactly
-- those rows so the delete does not scan the outbox.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- The W3C trace context of the request that wrote a row, so its publish (in-process or by
-- the sweeper, even after a restart) continues that request's trace.
ALTER TABLE outbox ADD COLUMN traceparent text;
