//! JSON canonicalisation: never panics (nesting is bounded), is idempotent,
//! and its output is valid JSON that canonicalises to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(canonical) = idem_core::json::canonicalize(data) {
        let again = idem_core::json::canonicalize(&canonical).expect("canonical output is JSON");
        assert_eq!(again, canonical, "canonicalisation is not idempotent");
    }
    let _ = idem_core::key::generate_content_key(data);
});
