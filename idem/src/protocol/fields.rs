//! Rule 6 over part of a JSON body (`RoutePolicy::fingerprint_fields`):
//! the bytes the fingerprint covers when a route compares only some fields,
//! or all but some.

use idem_core::BodyFields;
use serde_json::Value;

/// What the fingerprint covers instead of the body: the selected fields of
/// a JSON body, written as JSON; `None` to cover the body as it is (every
/// field, or a body that is not JSON).
///
/// `Include` gives the list of `[pointer, value]` pairs of the fields the
/// body has (a field that is absent and one that is `null` differ);
/// `Exclude` gives the body with those fields removed (an array element is
/// set to `null`, so that the others keep their places). Parsed only on
/// routes that select fields: others pay a comparison.
pub(super) fn selected(fields: &BodyFields, body: &[u8]) -> Option<Vec<u8>> {
    let (pointers, include) = match fields {
        BodyFields::Include(p) => (p, true),
        BodyFields::Exclude(p) => (p, false),
        _ => return None,
    };
    let doc: Value = serde_json::from_slice(body).ok()?;
    let picked = if include {
        Value::Array(
            pointers
                .iter()
                .filter_map(|p| {
                    doc.pointer(p)
                        .map(|v| Value::Array(vec![Value::String(p.clone()), v.clone()]))
                })
                .collect(),
        )
    } else {
        let mut doc = doc;
        for p in pointers {
            remove(&mut doc, p);
        }
        doc
    };
    serde_json::to_vec(&picked).ok()
}

/// Removes the field at `pointer` from `doc`, if it is there.
fn remove(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(members)) => {
            members.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = Value::Null;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(fields: &BodyFields, body: &str) -> Option<String> {
        selected(fields, body.as_bytes()).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    #[test]
    fn included_fields_are_all_that_counts() {
        let f = BodyFields::Include(vec!["/amount".into(), "/to/iban".into()]);
        let a = sel(
            &f,
            r#"{"amount": 10, "to": {"iban": "X1", "name": "A"}, "ts": 1}"#,
        );
        let b = sel(
            &f,
            r#"{"ts": 2, "to": {"name": "B", "iban": "X1"}, "amount": 10}"#,
        );
        assert_eq!(a, b);
        assert_ne!(a, sel(&f, r#"{"amount": 11, "to": {"iban": "X1"}}"#));
        // Absent and null differ.
        assert_ne!(sel(&f, r#"{"amount": null}"#), sel(&f, r#"{}"#));
    }

    #[test]
    fn excluded_fields_do_not_count() {
        let f = BodyFields::Exclude(vec!["/client_ts".into(), "/items/1".into(), "/a~1b".into()]);
        let a = sel(
            &f,
            r#"{"amount": 10, "client_ts": 1, "items": [1, 2, 3], "a/b": 1}"#,
        );
        let b = sel(
            &f,
            r#"{"amount": 10, "client_ts": 2, "items": [1, 9, 3], "a/b": 2}"#,
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            sel(&f, r#"{"amount": 11, "client_ts": 1, "items": [1, 2, 3]}"#)
        );
        assert_ne!(a, sel(&f, r#"{"amount": 10, "items": [9, 2, 3]}"#));
    }

    #[test]
    fn other_bodies_are_compared_whole() {
        let f = BodyFields::Exclude(vec!["/ts".into()]);
        assert_eq!(sel(&f, "not json"), None);
        assert_eq!(sel(&BodyFields::All, r#"{"ts": 1}"#), None);
    }
}
