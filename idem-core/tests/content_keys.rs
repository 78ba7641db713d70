//! Content keys against the vectors shared with the Python and JavaScript
//! clients (`clients/content-keys.json`): RFC 8785 canonical JSON, then
//! SHA-256, the same in every language.

use idem_core::json::jcs;
use idem_core::key::generate_content_key;

#[test]
fn the_shared_content_key_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/content-keys.json");
    let text = std::fs::read_to_string(path).expect("clients/content-keys.json");
    let table: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let vectors = table["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 10);
    for v in vectors {
        let name = v["name"].as_str().expect("name");
        let input = v["json"].as_str().expect("json").as_bytes();
        let canonical = jcs(input).expect(name);
        assert_eq!(
            String::from_utf8_lossy(&canonical),
            v["canonical"].as_str().expect("canonical"),
            "{name}"
        );
        assert_eq!(
            generate_content_key(input),
            v["key"].as_str().expect("key"),
            "{name}"
        );
    }
}

#[test]
fn content_that_is_not_json_is_keyed_by_its_bytes() {
    // sha256sum of the bytes `amount=10`.
    assert_eq!(
        generate_content_key(b"amount=10"),
        "baf62725a03085761123ef3983498c0acffd60eea7f6cad5d28ee7c3badfc592"
    );
}
