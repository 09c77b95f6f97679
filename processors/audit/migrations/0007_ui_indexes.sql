-- The run inspector (`/ui` on the gateway): keyset pagination over one caller's runs, newest
-- first, stays an index range scan however many rows the table holds. A caller's runs are the
-- request ids in its namespace, `<scope>.<id>` (processors/gateway/auth.py), so the scope is
-- the first part of the id. Each index ends in (seen, request_id), the page order and cursor.
-- Built inside the migration's transaction: on a large table this holds a write lock while it
-- builds; run `graphwire db migrate` in a quiet moment (the sink waits; records wait in Kafka).
CREATE INDEX IF NOT EXISTS graphwire_runs_scope_seen ON graphwire_runs
    (split_part(request_id, '.', 1), (coalesce(requested_at, finished_at)), request_id);
CREATE INDEX IF NOT EXISTS graphwire_runs_scope_graph_seen ON graphwire_runs
    (split_part(request_id, '.', 1), graph, (coalesce(requested_at, finished_at)), request_id);
CREATE INDEX IF NOT EXISTS graphwire_runs_scope_status_seen ON graphwire_runs
    (split_part(request_id, '.', 1), status, (coalesce(requested_at, finished_at)), request_id);
-- a thread's turns in order (thread ids are namespaced like request ids)
CREATE INDEX IF NOT EXISTS graphwire_runs_thread_seen ON graphwire_runs
    (thread_id, (coalesce(requested_at, finished_at)), request_id) WHERE thread_id IS NOT NULL;
-- the overview's last hour and the live feed's "what finished since"
CREATE INDEX IF NOT EXISTS graphwire_runs_scope_finished ON graphwire_runs
    (split_part(request_id, '.', 1), finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS graphwire_dead_letters_scope ON graphwire_dead_letters
    (split_part(request_id, '.', 1), id) WHERE request_id IS NOT NULL;
