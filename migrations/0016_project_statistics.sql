-- Statistics on project_id as PostgreSQL keeps them by default. Commit
-- f74d43f's migration 0016_tenant_estimates turned them off, so that a
-- project ANALYZE had not seen would not be estimated at one row; without
-- them large projects were underestimated instead (a value-quantity page over
-- 73,000 matches: 2.7 -> 479 ms), and it was withdrawn. A database it ran on
-- gets the default back here (elsewhere this changes nothing); the next
-- ANALYZE gathers them again. New projects are now analyzed as they grow
-- (store::statistics).
DO $$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'resource', 'resource_history', 'resource_secret', 'resource_compartment',
        'idx_token', 'idx_string', 'idx_date', 'idx_number', 'idx_quantity',
        'idx_reference', 'idx_uri', 'idx_composite', 'idx_text']::regclass[] LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN project_id SET STATISTICS -1', t);
    END LOOP;
END
$$;
