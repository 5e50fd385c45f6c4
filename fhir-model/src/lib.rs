//! FHIR R4 model for fhirgate: resource types, schema validation and `OperationOutcome`.
//! Pure: the schemas are compiled into the crate and nothing here does I/O.

mod error;
pub mod fhirpath;
pub mod fhirpath_patch;
pub mod json_bounds;
mod outcome;
pub mod resource_types;
pub mod search;
pub mod summary;
mod validation;

pub use error::Error;
pub use outcome::{operation_outcome, Issue, IssueCode, Severity};
pub use resource_types::is_valid_id;
pub use validation::{choice_forms, pointer_to_expression, Validator};
