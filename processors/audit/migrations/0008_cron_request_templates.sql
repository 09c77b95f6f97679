-- Crons that make full requests (the Agent Server API's crons, `POST /runs/crons`):
-- `template` holds the request fields every firing carries besides graph, input, thread_id and
-- metadata (config, context, interrupt_before/after, stream, webhook, durability,
-- multitask_strategy, or an input that is not an object); `run_ids` names how a firing's
-- request_id is made: 'name' ('<cron>:<scheduled time>') or 'uuid7' (a UUIDv7 of the scheduled
-- time, the same for the same firing, so a firing produced twice still runs once); `end_at`:
-- no firing after it (the cron is paused when its next firing would be later).
ALTER TABLE graphwire_crons
    ADD COLUMN template jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN run_ids text NOT NULL DEFAULT 'name' CHECK (run_ids IN ('name', 'uuid7')),
    ADD COLUMN end_at timestamptz;
