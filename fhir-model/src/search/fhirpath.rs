//! The FHIRPath engine search extraction compiles its expressions with;
//! it lives in [`crate::fhirpath`].

pub use crate::fhirpath::*;
