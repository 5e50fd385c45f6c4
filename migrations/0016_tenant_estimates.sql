-- No statistics on project_id: every tenant is planned as the same modest
-- share of a table (PostgreSQL's default, 0.5%), whether ANALYZE has seen it
-- or not. With statistics, the few projects ANALYZE saw are its most common
-- values and cover every row, so a project created since is estimated at one
-- row; under that estimate a scan of the project alone costs as little as the
-- index the query is for, and PostgreSQL picked it. Measured on a copy of a
-- database holding two 10,000-Patient projects, with a third loaded after the
-- last ANALYZE: the `_include` join read the new project's 200,000 resources
-- once per included reference (2.3 s a page, search-include 1.2 requests/s,
-- most of them timing out); without project statistics, 0.3 ms. The other
-- conditions (type, parameter, value) keep their statistics, and they are
-- what tells one plan from another inside a project.
-- ANALYZE leaves statistics it no longer gathers in place, and only a
-- superuser may remove them; on a database migrated as another role they
-- stay until a superuser runs the DELETE below (README, Configuration).
DO $$
DECLARE
    tenant_tables regclass[] := ARRAY[
        'resource', 'resource_history', 'resource_secret', 'resource_compartment',
        'idx_token', 'idx_string', 'idx_date', 'idx_number', 'idx_quantity',
        'idx_reference', 'idx_uri', 'idx_composite', 'idx_text']::regclass[];
    t regclass;
BEGIN
    FOREACH t IN ARRAY tenant_tables LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN project_id SET STATISTICS 0', t);
    END LOOP;
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        DELETE FROM pg_statistic s
         USING pg_attribute a
         WHERE a.attrelid = s.starelid AND a.attnum = s.staattnum
           AND a.attname = 'project_id' AND s.starelid = ANY(tenant_tables);
    END IF;
END
$$;
