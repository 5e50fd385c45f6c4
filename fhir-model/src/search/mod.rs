//! FHIR search, the pure half: which parameters exist (the registry), what a
//! resource is findable by (index extraction through FHIRPath), and what a
//! query asks for (parsing). The server compiles [`SearchRequest`] and
//! [`IndexValue`] rows into SQL; nothing here does I/O.
//!
//! This file is the contract between the three parts: the types below are
//! shared, each submodule owns one job.

pub mod compartment;
pub mod extract;
pub mod fhirpath;
pub mod parse;
pub mod registry;

pub use compartment::compartments;
pub use extract::extract;
pub use parse::{parse_search, SearchError};
pub use registry::{Registry, SearchParam};

/// FHIR search parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    /// The type's code, as SearchParameter.type spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One value a resource can be found by, for one search parameter. A
/// resource yields zero or more per parameter; the server stores each as a
/// row of the matching index table, in the write's transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// Coding, CodeableConcept (one per coding; its text in `text`),
    /// Identifier (system|value), ContactPoint (code = value), code, id,
    /// boolean (`code` = "true"/"false"), a string used as a token.
    Token {
        param: String,
        system: Option<String>,
        code: Option<String>,
        /// Display/text for `:text`, lower-cased and accent-folded.
        text: Option<String>,
    },
    /// Identifier.type coding for `identifier:of-type=system|code|value`.
    IdentifierOfType {
        param: String,
        type_system: Option<String>,
        type_code: Option<String>,
        value: String,
    },
    /// Every string part (HumanName: family, given, prefix, suffix, text;
    /// Address: line, city, district, state, postalCode, country, text).
    String {
        param: String,
        /// Lower-cased, accents folded (NFKD, combining marks removed).
        normalized: String,
        /// As written, for `:exact`.
        exact: String,
    },
    /// A date, dateTime, instant or Period as the inclusive range it covers,
    /// in microseconds since the Unix epoch, UTC. `1990` covers
    /// 1990-01-01T00:00:00 ..= 1990-12-31T23:59:59.999999; an open Period end
    /// is `i64::MAX` (start: `i64::MIN`). Dates without a zone are read as UTC.
    Date {
        param: String,
        low: i64,
        high: i64,
    },
    Number {
        param: String,
        value: f64,
    },
    Quantity {
        param: String,
        value: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// A Reference (or canonical). `target_type`/`target_id` when the
    /// reference is relative (`Patient/123`) or absolute with a FHIR-looking
    /// tail (`https://x/fhir/R4/Patient/123`); `url` always holds the raw string.
    Reference {
        param: String,
        url: String,
        target_type: Option<String>,
        target_id: Option<String>,
    },
    /// `Reference.identifier` for the `:identifier` modifier.
    ReferenceIdentifier {
        param: String,
        system: Option<String>,
        value: String,
    },
    Uri {
        param: String,
        value: String,
    },
    /// One combination of component values from the same element, in the
    /// parameter's component order. `near` (Location.position) is stored
    /// this way too: two [`IndexValue::Number`] parts, latitude then longitude.
    Composite {
        param: String,
        parts: Vec<IndexValue>,
    },
}

impl IndexValue {
    pub fn param(&self) -> &str {
        match self {
            IndexValue::Token { param, .. }
            | IndexValue::IdentifierOfType { param, .. }
            | IndexValue::String { param, .. }
            | IndexValue::Date { param, .. }
            | IndexValue::Number { param, .. }
            | IndexValue::Quantity { param, .. }
            | IndexValue::Reference { param, .. }
            | IndexValue::ReferenceIdentifier { param, .. }
            | IndexValue::Uri { param, .. }
            | IndexValue::Composite { param, .. } => param,
        }
    }
}

/// Comparison prefixes of number, date and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// Modifiers, after checking they fit the parameter's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    None,
    Exact,
    Contains,
    Text,
    Not,
    OfType,
    Identifier,
    Below,
    Above,
    /// `subject:Patient=123`: the reference must point at this type.
    Type(String),
    Missing,
}

/// One searched value. Several in one parameter (comma) are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `code`, `system|code`, `|code` (system: Some("")), `system|` (code: None).
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// `:of-type`: `type-system|type-code|value`.
    OfType {
        type_system: String,
        type_code: String,
        value: String,
    },
    /// For string, `:text` and uri values (unescaped).
    Text(String),
    /// The range the searched value covers (microseconds, inclusive), from its precision.
    Date { prefix: Prefix, low: i64, high: i64 },
    /// `100` covers [99.5, 100.5): `low` inclusive, `high` exclusive.
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        /// Matches Quantity.code or, with no system, Quantity.unit.
        code: Option<String>,
    },
    /// `Type/id`, bare `id` (type None), or an absolute URL reduced to
    /// type and id when it is on this server; `url` otherwise.
    Reference {
        target_type: Option<String>,
        id: Option<String>,
        url: Option<String>,
    },
    /// `:identifier` on a reference: `system|value`.
    Identifier {
        system: Option<String>,
        value: String,
    },
    /// `:missing=true|false`.
    Missing(bool),
    /// Composite: one value per component, `$`-separated in the query.
    Composite(Vec<SearchValue>),
    /// `near` (Location.position): `latitude|longitude[|distance[|units]]`,
    /// the distance converted to kilometres (10 km when not given).
    Near {
        latitude: f64,
        longitude: f64,
        distance_km: f64,
    },
}

/// One condition; the conditions of a request are ANDed.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// A parameter of `resource_type` with ORed values.
    Param {
        resource_type: String,
        code: String,
        kind: ParamType,
        modifier: Modifier,
        values: Vec<SearchValue>,
    },
    /// `subject:Patient.name=x`: resources whose reference `code` points at a
    /// `target_type` resource matching `inner`.
    Chain {
        resource_type: String,
        code: String,
        target_type: String,
        inner: Box<Filter>,
    },
    /// `_has:Observation:subject:code=x`: resources referenced through
    /// `reference_param` by a `source_type` resource matching `inner`.
    Has {
        source_type: String,
        reference_param: String,
        inner: Box<Filter>,
    },
    /// Any of these holds.
    AnyOf(Vec<Filter>),
    /// `_compartment=Patient/x` and compartment search: the resource is in
    /// that compartment (computed on write, see [`compartments`]).
    Compartment {
        compartment_type: String,
        id: String,
    },
}

/// What the parser needs to know about parameters; [`Registry`] implements
/// it for R4 and fhirgate's admin types.
pub trait ParamLookup {
    fn lookup(&self, resource_type: &str, code: &str) -> Option<ParamInfo>;
    /// The parameters whose index rows put a `resource_type` in a
    /// `compartment_type` compartment (e.g. Patient, Observation -> subject,
    /// performer; Condition -> subject, asserter, since its `patient` is
    /// `subject` of type Patient, [`SearchParam::reference_view`]).
    fn compartment_params(&self, compartment_type: &str, resource_type: &str) -> Vec<String>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    pub kind: ParamType,
    /// Reference targets (empty: any type).
    pub targets: Vec<String>,
    /// Composite parameters: the type of each component, in order.
    pub components: Vec<ParamType>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    /// A parameter code, or `_id` / `_lastUpdated`.
    pub code: String,
    pub kind: ParamType,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    False,
    Count,
    Data,
    Text,
}

/// `_include` / `_revinclude`: `source_type:param[:target_type]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    pub param: String,
    pub target_type: Option<String>,
    pub iterate: bool,
}

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;
pub const MAX_OFFSET: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// Types searched: the URL's type, or `_type` for a system search (empty: all).
    pub types: Vec<String>,
    pub filters: Vec<Filter>,
    pub sort: Vec<Sort>,
    pub count: usize,
    pub offset: usize,
    pub total: Total,
    pub summary: Summary,
    pub elements: Vec<String>,
    pub include: Vec<Include>,
    pub revinclude: Vec<Include>,
    /// Opaque keyset cursor from a `next` link.
    pub cursor: Option<String>,
    /// The query as it should appear in `self`/`next` links: every accepted
    /// parameter except `_cursor`, in the order given (unknown parameters
    /// dropped under lenient handling).
    pub canonical_query: Vec<(String, String)>,
}
