-- Scheduled runs (`graphwire scheduler`): requests that run later, and crons.
-- graphwire_schedules: one row per request to produce when it is due: a request that carried
-- after_seconds/run_at (taken from the requests topic), or one firing of a cron
-- (request_id '<cron>:<scheduled time>'). The leader produces due rows, then sets fired_at;
-- a leader that dies in between leaves the row to its successor, which produces it again
-- with the same request_id (the runner's dedup runs it once).
CREATE TABLE graphwire_schedules (
    request_id text PRIMARY KEY,
    due_at     timestamptz NOT NULL,
    graph      text NOT NULL,
    cron       text,                      -- the cron that fired it; NULL for a delayed request
    msg_key    bytea,                     -- the Kafka key to produce the request with
    value      bytea NOT NULL,            -- the request as produced (without after_seconds/run_at)
    headers    jsonb NOT NULL DEFAULT '[]', -- [[name, base64 value], ...] (reply-to, traceparent)
    source     text,                      -- topic/partition/offset of the delayed request
    created_at timestamptz NOT NULL DEFAULT now(),
    fired_at   timestamptz
);
CREATE INDEX graphwire_schedules_due ON graphwire_schedules (due_at) WHERE fired_at IS NULL;
CREATE INDEX graphwire_schedules_fired ON graphwire_schedules (fired_at) WHERE fired_at IS NOT NULL;
CREATE INDEX graphwire_schedules_cron ON graphwire_schedules (cron, due_at DESC)
    WHERE cron IS NOT NULL;

-- graphwire_crons: what `graphwire cron add` (and client.crons, the gateway) define.
CREATE TABLE graphwire_crons (
    name       text PRIMARY KEY,
    graph      text NOT NULL,
    schedule   text NOT NULL,             -- croniter syntax; a 6th field is seconds
    timezone   text NOT NULL DEFAULT 'UTC',
    input      jsonb NOT NULL,
    thread_id  text,
    metadata   jsonb NOT NULL DEFAULT '{}',
    missed     text NOT NULL DEFAULT 'run' CHECK (missed IN ('run', 'skip')),
    owner      text,                      -- the gateway caller's scope; NULL from the CLI
    paused     boolean NOT NULL DEFAULT false,
    next_at    timestamptz NOT NULL,      -- the next firing not yet put in graphwire_schedules
    last_fired timestamptz,               -- the scheduled time of the latest firing
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX graphwire_crons_due ON graphwire_crons (next_at) WHERE NOT paused;
