-- Event positions (seq) are per try: (delivery_attempt * 256 + try_index) * 2**24 + i, below
-- 2**53 (topics/positions.py). The first try's run_started is already 2**32: past integer.
-- Rewrites the table and its primary key under an exclusive lock: on a large audit table run
-- `graphwire db migrate` in a quiet moment (the sink waits; records wait in Kafka).
ALTER TABLE graphwire_events ALTER COLUMN seq TYPE bigint;
