//! Parsers never panic: arbitrary input gives a value or an error. Each
//! property runs proptest's default 256 cases (a few thousand in all, for
//! CI); by hand, run millions with
//!
//!     PROPTEST_CASES=1000000 cargo test --release -p fhirgate-server --test props
//!
//! A failure is saved under `server/tests/props.proptest-regressions` and
//! replayed first on every later run.

#[allow(dead_code)] // The Bundle strategy is for fuzz.rs.
mod strategies;

use access_policy::{
    parse_scope, validate, AccessPolicy, CompiledPolicy, Interaction, MembershipPolicy, Parameter,
    PolicyInput, Role,
};
use fhir_model::{
    fhirpath::Expression,
    fhirpath_patch,
    search::{extract::date_range, extract::extract, parse_search, Registry},
};
use fhirgate_server::fhir::patch::PatchDocument;
use proptest::prelude::*;
use strategies::*;

/// Runs a future to completion (patches apply in async code).
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #[test]
    fn fhirpath_parses_or_errs(source in fhirpath()) {
        let _ = Expression::parse(&source);
    }

    #[test]
    fn fhirpath_evaluates_or_errs(source in fhirpath(), resource in resource()) {
        if let Ok(expression) = Expression::parse(&source) {
            let _ = expression.evaluate(&resource);
            let _ = expression.reach();
        }
    }

    #[test]
    fn fhirpath_patch_applies_whole_or_not_at_all(mut resource in resource(), patch in fhirpath_patch()) {
        let before = resource.clone();
        if fhirpath_patch::apply(&mut resource, &patch).is_err() {
            prop_assert_eq!(resource, before);
        }
    }

    #[test]
    fn patches_apply_or_err(resource in resource(), json_patch in json_patch(), fhirpath_patch in fhirpath_patch()) {
        for body in [json_patch, fhirpath_patch] {
            if let Ok(patch) = PatchDocument::parse(body, 1000) {
                let resource_type = resource["resourceType"].as_str().unwrap_or("Patient").to_string();
                let _ = block_on(patch.apply_to(&resource_type, resource.clone()));
            }
        }
    }

    #[test]
    fn searches_parse_or_err(resource_type in prop::option::of(resource_type()), query in search_query(), lenient in any::<bool>()) {
        let _ = parse_search(Registry::get(), resource_type.as_deref(), &query, lenient);
    }

    #[test]
    fn index_extraction_takes_any_resource(resource in resource()) {
        let _ = extract(Registry::get(), &resource);
    }

    #[test]
    fn date_ranges_are_ordered(text in text()) {
        if let Some((low, high)) = date_range(&text) {
            prop_assert!(low <= high, "{text}: {low} > {high}");
        }
    }

    #[test]
    fn access_policies_compile_or_err(
        policy in resource(),
        parameter in (text(), text()),
        role in prop::sample::select(&[Role::SuperAdmin, Role::ProjectAdmin, Role::Member][..]),
        scope in text(),
        target in resource(),
    ) {
        let _ = validate(&policy);
        let _ = AccessPolicy::from_json(&policy);
        let scopes = parse_scope(&scope);
        let compiled = CompiledPolicy::compile(&PolicyInput {
            role,
            profile: "Patient/1",
            policies: vec![MembershipPolicy {
                policy,
                parameters: vec![Parameter::new(&parameter.0, &parameter.1)],
            }],
            policy_required: false,
            scopes: &scopes,
        });
        let resource_type = target["resourceType"].as_str().unwrap_or("Patient").to_string();
        for interaction in Interaction::ALL {
            let _ = compiled.allows(&resource_type, interaction);
            let _ = compiled.row_filter(std::slice::from_ref(&resource_type), interaction);
            let _ = compiled.write_filter(&resource_type, interaction, Some(&target), Some(&target));
        }
        let mut redacted = target.clone();
        compiled.redact(&mut redacted);
        let _ = compiled.hidden_fields(&resource_type);
        let _ = compiled.to_access_policy();
    }
}
