-- Observation's combo-* search parameters are unions of two others each
-- (`combo-code` is `code | component-code`) and are now searched through
-- their rows (fhir_model::search::SearchParam::stored_as), so their own
-- copies of the same values go.
DELETE FROM idx_token
 WHERE resource_type = 'Observation'
   AND param IN ('combo-code', 'combo-data-absent-reason', 'combo-value-concept');
DELETE FROM idx_quantity
 WHERE resource_type = 'Observation' AND param = 'combo-value-quantity';
DELETE FROM idx_composite
 WHERE resource_type = 'Observation'
   AND param IN ('combo-code-value-concept', 'combo-code-value-quantity');
