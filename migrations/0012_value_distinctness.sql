-- How many distinct token codes and reference targets there are, as a
-- fraction of the rows, for the planner. ANALYZE estimates it from a sample
-- of 30,000 rows, where identifiers and referenced ids (unique or nearly)
-- are drowned by a few common codes and so mostly unseen: on 10,000 Patients
-- it estimated 423 distinct codes where there were 10,026. With that, the
-- generic plan of a prepared `identifier=` search expects several matches
-- and costs more than a plan made for the value, so PostgreSQL plans the
-- statement again on every execution (half a millisecond, and more as the
-- table grows, since the estimate does not); it did so in some runs and not
-- others, halving token-search throughput. A fixed fraction grows with the
-- table. Common codes are still found by ANALYZE as most common values.
ALTER TABLE idx_token ALTER COLUMN code SET (n_distinct = -0.05);
ALTER TABLE idx_reference ALTER COLUMN target_id SET (n_distinct = -0.05);
