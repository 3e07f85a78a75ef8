-- The negative prompt the image model received (the user's, plus what enhancement and the
-- style preset added) is kept apart from the user's own, which stays in negative_prompt
-- as part of the message's settings.
ALTER TABLE messages ADD COLUMN effective_negative_prompt text;
