//! Issues found in a request, and the FHIR `OperationOutcome` that reports them.

use serde::Serialize;
use serde_json::{json, Value};

/// How bad an issue is (FHIR `IssueSeverity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// What kind of issue it is (FHIR `IssueType`), spelled as FHIR spells the codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Processing,
    NotFound,
    Deleted,
    Conflict,
    Security,
    Login,
    Forbidden,
    Exception,
    TooCostly,
    Throttled,
    NotSupported,
    Duplicate,
    Informational,
    Incomplete,
    Timeout,
    Transient,
}

/// One problem, in the shape of an `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// Text a person can act on; becomes both `details.text` and `diagnostics`.
    pub diagnostics: String,
    /// FHIRPath-style location such as `Patient.name[0].given`.
    pub expression: Option<String>,
}

impl Issue {
    /// An error-severity issue without a location.
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    /// The same issue, located at `expression`.
    pub fn at(self, expression: impl Into<String>) -> Self {
        Issue {
            expression: Some(expression.into()),
            ..self
        }
    }
}

/// An `OperationOutcome` resource listing `issues`, ready to send as a response body.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issue: Vec<Value> = issues.iter().map(issue_json).collect();
    json!({ "resourceType": "OperationOutcome", "issue": issue })
}

fn issue_json(issue: &Issue) -> Value {
    let mut out = json!({
        "severity": issue.severity,
        "code": issue.code,
        "details": { "text": issue.diagnostics },
        "diagnostics": issue.diagnostics,
    });
    if let Some(expression) = &issue.expression {
        out["expression"] = json!([expression]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Validator;

    #[test]
    fn codes_are_spelled_as_fhir_spells_them() {
        let spelled = |code: IssueCode| serde_json::to_value(code).unwrap();
        assert_eq!(spelled(IssueCode::NotFound), "not-found");
        assert_eq!(spelled(IssueCode::TooCostly), "too-costly");
        assert_eq!(spelled(IssueCode::NotSupported), "not-supported");
        assert_eq!(spelled(IssueCode::Invalid), "invalid");
        assert_eq!(spelled(IssueCode::Informational), "informational");
        assert_eq!(
            serde_json::to_value(Severity::Information).unwrap(),
            "information"
        );
    }

    #[test]
    fn operation_outcome_shape() {
        let outcome = operation_outcome(&[
            Issue::error(IssueCode::Value, "Bad date").at("Patient.birthDate"),
            Issue::error(IssueCode::NotFound, "Patient/1 not found"),
        ]);
        assert_eq!(
            outcome,
            json!({
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "value",
                        "details": { "text": "Bad date" },
                        "diagnostics": "Bad date",
                        "expression": ["Patient.birthDate"]
                    },
                    {
                        "severity": "error",
                        "code": "not-found",
                        "details": { "text": "Patient/1 not found" },
                        "diagnostics": "Patient/1 not found"
                    }
                ]
            })
        );
    }

    #[test]
    fn operation_outcome_is_valid_fhir() {
        let validator = Validator::new().unwrap();
        let issues = [
            Issue::error(IssueCode::Required, "Missing element").at("Patient.name"),
            Issue {
                severity: Severity::Warning,
                code: IssueCode::Informational,
                diagnostics: "Note".into(),
                expression: None,
            },
        ];
        assert_eq!(validator.validate(&operation_outcome(&issues)), Ok(()));
    }
}
