-- Weir control plane, initial schema (PostgreSQL). Times are Unix milliseconds; JSON is TEXT.
CREATE TABLE policy_versions (
    version     BIGINT PRIMARY KEY,
    document    TEXT NOT NULL,
    format      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE rollouts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version          BIGINT NOT NULL REFERENCES policy_versions (version),
    previous_version BIGINT REFERENCES policy_versions (version),
    target           TEXT NOT NULL,
    current_stage    BIGINT NOT NULL,
    state            TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state, id);

CREATE TABLE gateways (
    instance_id         TEXT PRIMARY KEY,
    labels              TEXT NOT NULL,
    build               TEXT NOT NULL,
    running_version     BIGINT,
    last_report         TEXT,
    last_report_version BIGINT,
    last_error          TEXT,
    last_report_at      BIGINT,
    connected           BIGINT NOT NULL,
    first_seen          BIGINT NOT NULL,
    last_seen           BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    role     TEXT NOT NULL,
    action   TEXT NOT NULL,
    details  TEXT NOT NULL
);

-- One row: bumped by every change to what gateways should run, so replicas sharing the
-- database notice each other's changes by polling it.
CREATE TABLE change_counter (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    counter  BIGINT NOT NULL
);
INSERT INTO change_counter (id, counter) VALUES (1, 0);
