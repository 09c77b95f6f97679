-- graphwire audit record: one row per request, one per event, one per dead letter.
-- Written by `graphwire audit` (the sink); read by `graphwire runs` and `graphwire status`.

CREATE TABLE graphwire_runs (
    request_id     text PRIMARY KEY,
    graph          text,
    thread_id      text,
    status         text NOT NULL,          -- 'accepted' until the result is seen, then its status
    input          jsonb,
    command        jsonb,
    output         jsonb,
    error          jsonb,
    interrupts     jsonb,
    metadata       jsonb NOT NULL DEFAULT '{}',
    attempts       integer,
    cached         boolean,
    duration_ms    double precision,
    requested_at   timestamptz,            -- the request message's Kafka timestamp
    finished_at    timestamptz,            -- the result message's Kafka timestamp
    request_source text,                   -- topic/partition/offset of the request
    result_source  text                    -- topic/partition/offset of the result
);
CREATE INDEX graphwire_runs_seen ON graphwire_runs ((coalesce(requested_at, finished_at)) DESC);
CREATE INDEX graphwire_runs_graph_seen
    ON graphwire_runs (graph, (coalesce(requested_at, finished_at)) DESC);
CREATE INDEX graphwire_runs_status_seen
    ON graphwire_runs (status, (coalesce(requested_at, finished_at)) DESC);
CREATE INDEX graphwire_runs_thread ON graphwire_runs (thread_id) WHERE thread_id IS NOT NULL;

CREATE TABLE graphwire_events (
    request_id text NOT NULL,
    seq        integer NOT NULL,
    type       text NOT NULL,
    node       text,
    data       jsonb,
    ts         timestamptz NOT NULL,
    PRIMARY KEY (request_id, seq)
);
-- `graphwire db prune` deletes events older than the retention through this index.
CREATE INDEX graphwire_events_ts ON graphwire_events (ts);

CREATE TABLE graphwire_dead_letters (
    id               bigserial PRIMARY KEY,
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    origin           text NOT NULL,        -- 'runner' (from the dlq topic) or 'audit' (the sink's own)
    request_id       text,
    key              bytea,
    value            bytea,
    headers          jsonb NOT NULL DEFAULT '[]',
    reason           text NOT NULL,
    received_at      timestamptz NOT NULL,
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX graphwire_dead_letters_request ON graphwire_dead_letters (request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX graphwire_dead_letters_received ON graphwire_dead_letters (received_at);
