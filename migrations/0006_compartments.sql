-- The compartments each resource is in (today: Patient, from the vendored
-- Patient CompartmentDefinition), replaced on every write with the search
-- index (one statement deletes and inserts, so, like the index tables, no
-- unique key). `_compartment` and `*?_compartment=%patient` policies are one
-- EXISTS on the first index whatever the resource's type; the second finds
-- everything in one patient's compartment.
CREATE TABLE resource_compartment (
    project_id       uuid NOT NULL,
    resource_type    text NOT NULL,
    resource_id      uuid NOT NULL,
    compartment_type text NOT NULL,
    compartment_id   uuid NOT NULL
);
CREATE INDEX resource_compartment_resource
    ON resource_compartment (project_id, resource_type, resource_id, compartment_type, compartment_id);
CREATE INDEX resource_compartment_member
    ON resource_compartment (project_id, compartment_type, compartment_id, resource_type);

-- Resources stored before this migration: a Patient is in its own
-- compartment, and a resource referring to a Patient through one of the
-- compartment's parameters (the vendored definition, fhir-model/data/
-- compartment-patient.json, listed here) is in that Patient's.
INSERT INTO resource_compartment
SELECT project_id, resource_type, id, 'Patient', id
FROM resource WHERE resource_type = 'Patient' AND NOT deleted;

INSERT INTO resource_compartment
SELECT DISTINCT i.project_id, i.resource_type, i.resource_id, 'Patient', i.target_id
FROM idx_reference i
JOIN (VALUES
    ('Account', 'subject'),
    ('AdverseEvent', 'subject'),
    ('AllergyIntolerance', 'patient'),
    ('AllergyIntolerance', 'recorder'),
    ('AllergyIntolerance', 'asserter'),
    ('Appointment', 'actor'),
    ('AppointmentResponse', 'actor'),
    ('AuditEvent', 'patient'),
    ('Basic', 'patient'),
    ('Basic', 'author'),
    ('BodyStructure', 'patient'),
    ('CarePlan', 'patient'),
    ('CarePlan', 'performer'),
    ('CareTeam', 'patient'),
    ('CareTeam', 'participant'),
    ('ChargeItem', 'subject'),
    ('Claim', 'patient'),
    ('Claim', 'payee'),
    ('ClaimResponse', 'patient'),
    ('ClinicalImpression', 'subject'),
    ('Communication', 'subject'),
    ('Communication', 'sender'),
    ('Communication', 'recipient'),
    ('CommunicationRequest', 'subject'),
    ('CommunicationRequest', 'sender'),
    ('CommunicationRequest', 'recipient'),
    ('CommunicationRequest', 'requester'),
    ('Composition', 'subject'),
    ('Composition', 'author'),
    ('Composition', 'attester'),
    ('Condition', 'patient'),
    ('Condition', 'asserter'),
    ('Consent', 'patient'),
    ('Coverage', 'policy-holder'),
    ('Coverage', 'subscriber'),
    ('Coverage', 'beneficiary'),
    ('Coverage', 'payor'),
    ('CoverageEligibilityRequest', 'patient'),
    ('CoverageEligibilityResponse', 'patient'),
    ('DetectedIssue', 'patient'),
    ('DeviceRequest', 'subject'),
    ('DeviceRequest', 'performer'),
    ('DeviceUseStatement', 'subject'),
    ('DiagnosticReport', 'subject'),
    ('DocumentManifest', 'subject'),
    ('DocumentManifest', 'author'),
    ('DocumentManifest', 'recipient'),
    ('DocumentReference', 'subject'),
    ('DocumentReference', 'author'),
    ('Encounter', 'subject'),
    ('EnrollmentRequest', 'subject'),
    ('EpisodeOfCare', 'patient'),
    ('ExplanationOfBenefit', 'patient'),
    ('ExplanationOfBenefit', 'payee'),
    ('FamilyMemberHistory', 'patient'),
    ('Flag', 'patient'),
    ('Goal', 'patient'),
    ('Group', 'member'),
    ('ImagingStudy', 'patient'),
    ('Immunization', 'patient'),
    ('ImmunizationEvaluation', 'patient'),
    ('ImmunizationRecommendation', 'patient'),
    ('Invoice', 'subject'),
    ('Invoice', 'patient'),
    ('Invoice', 'recipient'),
    ('List', 'subject'),
    ('List', 'source'),
    ('MeasureReport', 'patient'),
    ('Media', 'subject'),
    ('MedicationAdministration', 'patient'),
    ('MedicationAdministration', 'performer'),
    ('MedicationAdministration', 'subject'),
    ('MedicationDispense', 'subject'),
    ('MedicationDispense', 'patient'),
    ('MedicationDispense', 'receiver'),
    ('MedicationRequest', 'subject'),
    ('MedicationStatement', 'subject'),
    ('MolecularSequence', 'patient'),
    ('NutritionOrder', 'patient'),
    ('Observation', 'subject'),
    ('Observation', 'performer'),
    ('Patient', 'link'),
    ('Person', 'patient'),
    ('Procedure', 'patient'),
    ('Procedure', 'performer'),
    ('Provenance', 'patient'),
    ('QuestionnaireResponse', 'subject'),
    ('QuestionnaireResponse', 'author'),
    ('RelatedPerson', 'patient'),
    ('RequestGroup', 'subject'),
    ('RequestGroup', 'participant'),
    ('ResearchSubject', 'individual'),
    ('RiskAssessment', 'subject'),
    ('Schedule', 'actor'),
    ('ServiceRequest', 'subject'),
    ('ServiceRequest', 'performer'),
    ('Specimen', 'subject'),
    ('SupplyDelivery', 'patient'),
    ('SupplyRequest', 'subject'),
    ('Task', 'patient'),
    ('Task', 'focus'),
    ('VisionPrescription', 'patient')
) AS c (resource_type, param) ON c.resource_type = i.resource_type AND c.param = i.param
WHERE i.target_type = 'Patient' AND i.target_id IS NOT NULL
  AND NOT (i.resource_type = 'Patient' AND i.target_id = i.resource_id);
