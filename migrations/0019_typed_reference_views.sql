-- Typed reference parameters are read from their base parameter's rows
-- (fhir_model::search::SearchParam::reference_view): `Observation.patient`
-- is `Observation.subject.where(resolve() is Patient)`, so its references are
-- the `subject` rows whose target type is Patient, and writing them again
-- under `patient` cost every clinical resource a heap row and three index
-- entries. Their `:identifier` rows (in idx_token) stay their own.
CREATE TEMPORARY TABLE reference_view (resource_type text, param text, base text, target_type text)
    ON COMMIT DROP;
INSERT INTO reference_view VALUES
    ('Account', 'patient', 'subject', 'Patient'),
    ('Appointment', 'location', 'actor', 'Location'),
    ('Appointment', 'patient', 'actor', 'Patient'),
    ('Appointment', 'practitioner', 'actor', 'Practitioner'),
    ('AppointmentResponse', 'location', 'actor', 'Location'),
    ('AppointmentResponse', 'patient', 'actor', 'Patient'),
    ('AppointmentResponse', 'practitioner', 'actor', 'Practitioner'),
    ('Basic', 'patient', 'subject', 'Patient'),
    ('CarePlan', 'patient', 'subject', 'Patient'),
    ('CareTeam', 'patient', 'subject', 'Patient'),
    ('ChargeItem', 'patient', 'subject', 'Patient'),
    ('ClinicalImpression', 'patient', 'subject', 'Patient'),
    ('Communication', 'patient', 'subject', 'Patient'),
    ('CommunicationRequest', 'patient', 'subject', 'Patient'),
    ('Composition', 'patient', 'subject', 'Patient'),
    ('Condition', 'patient', 'subject', 'Patient'),
    ('Contract', 'patient', 'subject', 'Patient'),
    ('DeviceRequest', 'patient', 'subject', 'Patient'),
    ('DiagnosticReport', 'patient', 'subject', 'Patient'),
    ('DocumentManifest', 'patient', 'subject', 'Patient'),
    ('DocumentReference', 'patient', 'subject', 'Patient'),
    ('Encounter', 'patient', 'subject', 'Patient'),
    ('Encounter', 'practitioner', 'participant', 'Practitioner'),
    ('Flag', 'patient', 'subject', 'Patient'),
    ('Goal', 'patient', 'subject', 'Patient'),
    ('GuidanceResponse', 'patient', 'subject', 'Patient'),
    ('ImagingStudy', 'patient', 'subject', 'Patient'),
    ('Invoice', 'patient', 'subject', 'Patient'),
    ('List', 'patient', 'subject', 'Patient'),
    ('MeasureReport', 'patient', 'subject', 'Patient'),
    ('Media', 'patient', 'subject', 'Patient'),
    ('MedicationAdministration', 'patient', 'subject', 'Patient'),
    ('MedicationDispense', 'patient', 'subject', 'Patient'),
    ('MedicationRequest', 'patient', 'subject', 'Patient'),
    ('MedicationStatement', 'patient', 'subject', 'Patient'),
    ('Observation', 'patient', 'subject', 'Patient'),
    ('Person', 'patient', 'link', 'Patient'),
    ('Person', 'practitioner', 'link', 'Practitioner'),
    ('Person', 'relatedperson', 'link', 'RelatedPerson'),
    ('Procedure', 'patient', 'subject', 'Patient'),
    ('Provenance', 'patient', 'target', 'Patient'),
    ('QuestionnaireResponse', 'patient', 'subject', 'Patient'),
    ('RequestGroup', 'patient', 'subject', 'Patient'),
    ('RiskAssessment', 'patient', 'subject', 'Patient'),
    ('ServiceRequest', 'patient', 'subject', 'Patient'),
    ('Specimen', 'patient', 'subject', 'Patient'),
    ('Task', 'patient', 'subject', 'Patient');

-- A base row that was also the view's row must carry the view's target type
-- even where the target id is no UUID (rows kept it only with a UUID id
-- before; store::index keeps it whenever the reference names a type now).
UPDATE idx_reference b SET target_type = v.target_type
  FROM reference_view v, idx_reference t
 WHERE b.resource_type = v.resource_type AND b.param = v.base AND b.target_type IS NULL
   AND t.project_id = b.project_id AND t.resource_type = b.resource_type
   AND t.resource_id = b.resource_id AND t.param = v.param AND t.url = b.url;

DELETE FROM idx_reference i
 USING reference_view v
 WHERE i.resource_type = v.resource_type AND i.param = v.param;
