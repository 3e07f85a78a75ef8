-- The settings a SendMessage request left unset ('model', 'size', 'style_preset',
-- 'negative_prompt', 'seed'). An edit or a re-roll takes those from the previous message
-- once its intent is known (services/conversation/src/inheritance.rs); a retried
-- SendMessage that leaves them unset again is the same request. Rows written before this
-- column inherit nothing.
ALTER TABLE messages ADD COLUMN unset_settings text[] NOT NULL DEFAULT '{}';
