-- 1. A dead letter is unique per source position *and* origin: the runner's dead letter of a
--    request and the sink's own rejection of the same record are both kept, with their reasons.
DO $$
DECLARE name text;
BEGIN
    FOR name IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'graphwire_dead_letters'::regclass AND contype = 'u'
    LOOP
        EXECUTE format('ALTER TABLE graphwire_dead_letters DROP CONSTRAINT %I', name);
    END LOOP;
END $$;
ALTER TABLE graphwire_dead_letters ADD CONSTRAINT graphwire_dead_letters_source_origin_key
    UNIQUE (source_topic, source_partition, source_offset, origin);

-- 2. Where the run's result came from, so an older result written late (by a sink process
--    that lost the partition mid-batch) never overwrites a newer one.
ALTER TABLE graphwire_runs
    ADD COLUMN result_partition integer,
    ADD COLUMN result_offset bigint;
UPDATE graphwire_runs
SET result_partition = split_part(result_source, '/', 2)::integer,
    result_offset = split_part(result_source, '/', 3)::bigint
WHERE result_source IS NOT NULL;
