//! Record decoding, for each binary encoding: the stored response (SQLite,
//! PostgreSQL, Redis payload) and Redis's record envelope. Never panics;
//! whatever decodes re-encodes to bytes that decode to the same value.
#![no_main]
use idem_core::StoredResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = StoredResponse::decode(data) {
        let again = StoredResponse::decode(&r.encode()).expect("re-encoded response decodes");
        assert_eq!(again, r);
    }
    let _ = idem_redis_store::decode_record(data);
});
