-- A search parameter whose expression is exactly another's of its type
-- (`Patient.phonetic` and `Patient.name` are both `Patient.name`) is read
-- from the rows of the one first in byte order
-- (fhir_model::search::SearchParam::stored_as), so its copies of the same
-- values go: two string rows and six index entries per Patient.
DELETE FROM idx_string
 WHERE param = 'phonetic'
   AND resource_type IN ('Patient', 'Person', 'Practitioner', 'RelatedPerson');
DELETE FROM idx_token WHERE resource_type = 'CapabilityStatement' AND param = 'version';
DELETE FROM idx_uri WHERE resource_type = 'CodeSystem' AND param = 'url';
