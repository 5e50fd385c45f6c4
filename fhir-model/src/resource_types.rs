//! Resource type names the server accepts, and the FHIR `id` rule.

/// The 146 concrete FHIR R4 resource types, sorted (from the schema's `discriminator.mapping`).
pub const R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Medplum-style administrative types that fhirgate stores as resources, sorted.
pub const ADMIN_RESOURCE_TYPES: &[&str] = &[
    "AccessPolicy",
    "Bot",
    "ClientApplication",
    "JsonWebKey",
    "Login",
    "Project",
    "ProjectMembership",
    "User",
];

/// Whether `t` is an R4 or an administrative resource type (case-sensitive).
pub fn is_known_resource_type(t: &str) -> bool {
    type_index(t).is_some()
}

/// Whether `t` is one of the administrative types, which need stricter access rules.
pub fn is_admin_resource_type(t: &str) -> bool {
    ADMIN_RESOURCE_TYPES.binary_search(&t).is_ok()
}

/// Every known type: the R4 types, then the administrative ones.
pub fn all_resource_types() -> impl Iterator<Item = &'static str> {
    R4_RESOURCE_TYPES
        .iter()
        .chain(ADMIN_RESOURCE_TYPES)
        .copied()
}

/// Position of `t` in [`all_resource_types`]; lets callers keep per-type data in a `Vec`.
pub(crate) fn type_index(t: &str) -> Option<usize> {
    R4_RESOURCE_TYPES.binary_search(&t).ok().or_else(|| {
        ADMIN_RESOURCE_TYPES
            .binary_search(&t)
            .ok()
            .map(|i| R4_RESOURCE_TYPES.len() + i)
    })
}

/// The FHIR `id` rule, `[A-Za-z0-9\-\.]{1,64}`, for ids in URLs and in resources.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r4_types_match_the_vendored_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(crate::validation::R4_SCHEMA).expect("vendored schema parses");
        let mut from_schema: Vec<&str> = schema["discriminator"]["mapping"]
            .as_object()
            .expect("discriminator mapping")
            .keys()
            .map(String::as_str)
            .collect();
        from_schema.sort_unstable();
        assert_eq!(R4_RESOURCE_TYPES, from_schema.as_slice());
        assert_eq!(R4_RESOURCE_TYPES.len(), 146);
    }

    #[test]
    fn admin_types_are_sorted_and_not_r4() {
        assert!(ADMIN_RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert!(ADMIN_RESOURCE_TYPES
            .iter()
            .all(|t| R4_RESOURCE_TYPES.binary_search(t).is_err()));
    }

    #[test]
    fn lookups() {
        assert!(is_known_resource_type("Patient"));
        assert!(is_known_resource_type("ProjectMembership"));
        assert!(!is_known_resource_type("patient"));
        assert!(!is_known_resource_type("Foo"));
        assert!(is_admin_resource_type("User"));
        assert!(!is_admin_resource_type("Patient"));
        assert_eq!(all_resource_types().count(), 154);
        for (i, t) in all_resource_types().enumerate() {
            assert_eq!(type_index(t), Some(i), "{t}");
        }
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("123-abc.DEF"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("é"));
    }
}
