-- The string index by the first three characters of the normalised value:
-- a prefix search of three or more characters is an equality on them, under
-- which this index holds the matches in resource id order, so a search page
-- in the default order reads its twenty matches from the start instead of
-- collecting every match and sorting them (`store::search`'s driver).
-- `normalized` is included, so the rest of the prefix and `:exact` are
-- checked in the index too. idx_string_value stays for prefixes whose first
-- three characters many values share (codes, numbered names), where a range
-- on the whole value is narrower; the planner picks.
CREATE INDEX idx_string_head ON idx_string
    (project_id, resource_type, param, left(normalized, 3) text_pattern_ops, resource_id)
    INCLUDE (normalized);
