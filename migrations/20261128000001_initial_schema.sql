-- The whole data model of Atelier, owned by the conversation service.
-- Ids are UUIDv7 made by the service (time-ordered, so b-tree inserts stay at the right edge).
-- User ids are the JWT subjects the edge verified: text, not uuid.

CREATE TABLE accounts (
    user_id     text PRIMARY KEY CHECK (char_length(user_id) BETWEEN 1 AND 255),
    -- Credits available now: grants minus reservations plus releases (captures move nothing).
    balance     bigint NOT NULL CHECK (balance >= 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Append-only. One row per (user, kind, reference): a retried reservation, capture, release
-- or grant hits the unique key instead of moving credits twice.
CREATE TABLE credit_ledger (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL REFERENCES accounts (user_id),
    kind        text NOT NULL CHECK (kind IN ('grant', 'reserve', 'capture', 'release')),
    amount      bigint NOT NULL CHECK (amount > 0),
    -- reserve: the message id; capture and release: the generation id; grant: the caller's reference.
    reference   text NOT NULL CHECK (char_length(reference) BETWEEN 1 AND 255),
    created_at  timestamptz NOT NULL,
    UNIQUE (user_id, kind, reference)
);

CREATE TABLE conversations (
    id                uuid PRIMARY KEY,
    owner_id          text NOT NULL,
    title             text NOT NULL DEFAULT '' CHECK (char_length(title) <= 200),
    auto_titled       boolean NOT NULL DEFAULT true,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    message_count     integer NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    generation_count  integer NOT NULL DEFAULT 0 CHECK (generation_count >= 0),
    max_generations   integer NOT NULL CHECK (max_generations > 0),
    created_at        timestamptz NOT NULL,
    last_activity_at  timestamptz NOT NULL,
    CHECK (generation_count <= max_generations)
);

-- ListConversations: a user's conversations by last activity, keyset-paged.
CREATE INDEX conversations_by_owner_activity
    ON conversations (owner_id, last_activity_at DESC, id DESC);

CREATE TABLE messages (
    id                 uuid PRIMARY KEY,
    conversation_id    uuid NOT NULL REFERENCES conversations (id),
    -- Copied from the conversation so every ownership check is one index lookup.
    owner_id           text NOT NULL,
    content            text NOT NULL CHECK (char_length(content) BETWEEN 1 AND 4000),
    model              text NOT NULL,
    width              integer NOT NULL CHECK (width > 0),
    height             integer NOT NULL CHECK (height > 0),
    image_count        smallint NOT NULL CHECK (image_count BETWEEN 1 AND 4),
    style_preset       text NOT NULL DEFAULT '',
    seed               bigint CHECK (seed >= 0),
    negative_prompt    text NOT NULL DEFAULT '',
    status             text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')),
    intent_kind        text CHECK (intent_kind IN ('new', 'edit')),
    resolved_prompt    text,
    edit_type          text,
    strength           real CHECK (strength BETWEEN 0 AND 1),
    enhanced_prompt    text,
    cost               bigint NOT NULL CHECK (cost >= 0),
    client_request_id  text CHECK (char_length(client_request_id) BETWEEN 1 AND 100),
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    -- A retried SendMessage finds its first answer here instead of charging again.
    UNIQUE (conversation_id, client_request_id)
);

-- ListMessages: a conversation's messages newest first, keyset-paged.
CREATE INDEX messages_by_conversation_created
    ON messages (conversation_id, created_at DESC, id DESC);

CREATE TABLE generations (
    id                  uuid PRIMARY KEY,
    message_id          uuid NOT NULL REFERENCES messages (id),
    conversation_id     uuid NOT NULL REFERENCES conversations (id),
    owner_id            text NOT NULL,
    position            smallint NOT NULL CHECK (position BETWEEN 0 AND 3),
    status              text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    model               text NOT NULL,
    width               integer NOT NULL CHECK (width > 0),
    height              integer NOT NULL CHECK (height > 0),
    seed                bigint NOT NULL CHECK (seed >= 0),
    prompt              text NOT NULL DEFAULT '',
    negative_prompt     text NOT NULL DEFAULT '',
    init_generation_id  uuid REFERENCES generations (id),
    strength            real CHECK (strength BETWEEN 0 AND 1),
    image_key           text,
    cost                bigint NOT NULL CHECK (cost >= 0),
    is_favorite         boolean NOT NULL DEFAULT false,
    error               text,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    completed_at        timestamptz,
    -- Also the index for "the generations of these messages".
    UNIQUE (message_id, position)
);

-- The pipeline's "what is still running in this conversation" and the previous-image lookup.
CREATE INDEX generations_by_conversation_status
    ON generations (conversation_id, status, created_at DESC);

-- ListFavorites: a user's favourite images newest first; only favourites are indexed.
CREATE INDEX generations_favorites_by_owner
    ON generations (owner_id, created_at DESC, id DESC) WHERE is_favorite;

-- Rows written in the same transaction as the change they announce; the relay publishes
-- them to NATS (Nats-Msg-Id = id, so a second publish is dropped as a duplicate).
CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    -- Relative to the configured subject prefix, for example 'jobs.generate' or 'events.user.alice'.
    subject       text NOT NULL,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL,
    published_at  timestamptz
);

-- The sweeper's scan for rows a crash left unpublished.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
