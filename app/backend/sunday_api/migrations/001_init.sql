CREATE TABLE IF NOT EXISTS boards (
    id          BIGSERIAL PRIMARY KEY,
    name        VARCHAR(100) NOT NULL CHECK (length(name) >= 1),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS items (
    id          BIGSERIAL PRIMARY KEY,
    board_id    BIGINT NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    title       VARCHAR(200) NOT NULL CHECK (length(title) >= 1),
    status      TEXT NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'doing', 'done')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
