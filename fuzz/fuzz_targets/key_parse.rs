//! Keys and Structured-Field strings: parsing never panics; an accepted key
//! is valid by the rules, and parses to itself again.
#![no_main]
use idem_core::key::KeyRules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for rules in [KeyRules::default(), KeyRules::new(1, 64)] {
        if let Ok(key) = rules.parse_bytes(data) {
            let k = key.as_str();
            assert!(rules.validate(k).is_ok(), "accepted {k:?} but it is not valid");
            assert_eq!(rules.parse(k).map(|again| again.as_str().to_owned()).ok().as_deref(), Some(k));
            assert_eq!(rules.parse(&format!("\"{k}\"")).ok().map(|q| q.as_str().to_owned()).as_deref(), Some(k));
        }
    }
    let secret = idem_core::Secret::from_bytes(*b"fuzz-secret-fuzz-secret-fuzz-sec").expect("secret");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = idem_core::signed::verify(&secret, text, b"user");
    }
});
