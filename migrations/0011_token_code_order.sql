-- The token index by code, then resource id, with the system included
-- rather than a key: the matches of one code come in resource id order
-- whatever their system, so every single-value token search (with its
-- system or without: `status=final`, `gender=female`, `code=8480-6`) can
-- drive a search page (`store::search`'s driver) and read twenty entries
-- instead of collecting every match. A system is still checked in the
-- index (index-only), among the entries of its code.
CREATE INDEX idx_token_code ON idx_token (project_id, resource_type, param, code, resource_id) INCLUDE (system);
DROP INDEX idx_token_value;
ALTER INDEX idx_token_code RENAME TO idx_token_value;
