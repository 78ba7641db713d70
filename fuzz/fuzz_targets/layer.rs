//! The layer driven with arbitrary methods, paths, headers and bodies over a
//! MemoryStore: every request gets an answer (no panic, no hang), and each
//! input executes the handler at most once however often it is sent.
#![no_main]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use idem::{IdempotencyLayer, MemoryStore};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};

fn split(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    // Fields separated by 0xFF; the last part is the body.
    let mut parts: Vec<&[u8]> = data.splitn(8, |b| *b == 0xFF).collect();
    let body = parts.pop().unwrap_or_default();
    (parts, body)
}

fuzz_target!(|data: &[u8]| {
    let (fields, body) = split(data);
    let method = fields.first().copied().unwrap_or(b"POST");
    let path = fields.get(1).copied().unwrap_or(b"/");
    let Ok(method) = http::Method::from_bytes(method) else { return };
    let mut builder = Request::builder().method(method).uri(
        http::Uri::builder().path_and_query(path).build().unwrap_or_else(|_| http::Uri::from_static("/")),
    );
    for pair in fields.iter().skip(2).collect::<Vec<_>>().chunks(2) {
        if let [name, value] = pair {
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value)) {
                builder = builder.header(n, v);
            }
        }
    }
    let Ok(req) = builder.body(Full::new(Bytes::copy_from_slice(body))) else { return };
    let (parts, body) = req.into_parts();

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = IdempotencyLayer::new(Arc::new(MemoryStore::new())).layer(tower::service_fn(
        move |req: Request<idem::layer::RequestBody<Full<Bytes>>>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
            }
        },
    ));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let req = Request::from_parts(parts.clone(), body.clone());
            let res = svc.clone().oneshot(req).await.expect("the layer answers");
            statuses.push(res.status().as_u16());
            let _ = res.into_body().collect().await;
        }
        // Covered and accepted: executed once, replayed the second time.
        // Uncovered: executed twice. Refused: never.
        assert!(calls.load(Ordering::SeqCst) <= 2);
        if statuses[0] < 300 && calls.load(Ordering::SeqCst) == 1 {
            assert_eq!(statuses[1], statuses[0], "a replay answers as the execution did");
        }
    });
});
