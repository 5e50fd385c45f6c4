-- The string index leads with the first three characters of the normalised
-- value: a prefix search of three or more characters is an equality on
-- them, under which the index holds the matches in resource id order, so a
-- search page in the default order reads its twenty matches from the start
-- instead of collecting every match and sorting them (`store::search`'s
-- driver). `normalized` is included, so the rest of the prefix and `:exact`
-- are checked in the index too. Replaces idx_string_value, so a write
-- maintains as many indexes as before.
CREATE INDEX idx_string_head ON idx_string
    (project_id, resource_type, param, left(normalized, 3) text_pattern_ops, resource_id)
    INCLUDE (normalized);
DROP INDEX idx_string_value;
