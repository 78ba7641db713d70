//! The benchmarks' baseline: a plain hyper reverse proxy with no
//! idempotency, pooled client and all, the way one would write it without
//! idem. bench/gateway.sh compares `idem gateway` against it.
//!
//! Run with `cargo run --release -p idem-gateway --example plain_proxy -- LISTEN UPSTREAM`,
//! for example `-- 127.0.0.1:18201 127.0.0.1:18200`.

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18201".into());
    let upstream: Authority = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18200".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    eprintln!("plain proxy listening on http://{listen} -> http://{upstream}");
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let (mut parts, body) = req.into_parts();
                    let pq = parts
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned();
                    parts.uri = Uri::builder()
                        .scheme(Scheme::HTTP)
                        .authority(upstream)
                        .path_and_query(pq)
                        .build()?;
                    for h in HOP_BY_HOP {
                        parts.headers.remove(h);
                    }
                    parts.headers.remove("host");
                    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
                        parts.headers.insert("x-forwarded-for", v);
                    }
                    parts.version = http::Version::HTTP_11;
                    let res: Response<Body> =
                        match client.request(Request::from_parts(parts, body)).await {
                            Ok(res) => {
                                let (mut parts, body) = res.into_parts();
                                for h in HOP_BY_HOP {
                                    parts.headers.remove(h);
                                }
                                Response::from_parts(parts, body.boxed())
                            }
                            Err(_) => {
                                let mut r = Response::new(
                                    Full::new(Bytes::from_static(b"bad gateway"))
                                        .map_err(|never| match never {})
                                        .boxed(),
                                );
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                    Ok::<_, http::Error>(res)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
