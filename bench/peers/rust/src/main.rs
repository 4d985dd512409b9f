//! Benchmark peer: the article's Rust server, hyper 0.14 + tokio + serde_json::Value.
//!
//!   GET  /      -> 200 text/plain "Hello, cloud native!"
//!   POST /echo  -> the JSON body parsed into serde_json::Value and re-serialised.
//!
//! Port: --port N (or -port N, --port=N, a bare N), else env PORT, else 8080.
//! Threads: tokio multi-thread runtime; worker threads default to the available
//! CPUs (the affinity mask), env WORKERS overrides.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::HttpBody;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Method, Request, Response, Server, StatusCode};

const HELLO: &str = "Hello, cloud native!";
const MAX_BODY: usize = 1 << 20;

fn simple(status: StatusCode, ctype: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = simple(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", b"method not allowed\n".to_vec());
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn read_body(mut body: Body) -> Result<Vec<u8>, Response<Body>> {
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| simple(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", b"bad body\n".to_vec()))?;
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(simple(StatusCode::PAYLOAD_TOO_LARGE, "text/plain; charset=utf-8", b"body too large\n".to_vec()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn echo(req: Request<Body>) -> Response<Body> {
    if let Some(len) = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<usize>().ok()) {
        if len > MAX_BODY {
            return simple(StatusCode::PAYLOAD_TOO_LARGE, "text/plain; charset=utf-8", b"body too large\n".to_vec());
        }
    }
    let bytes = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) => match serde_json::to_vec(&v) {
            Ok(out) => simple(StatusCode::OK, "application/json", out),
            Err(e) => simple(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", e.to_string().into_bytes()),
        },
        Err(e) => {
            let msg = serde_json::json!({ "error": e.to_string() });
            simple(StatusCode::BAD_REQUEST, "application/json", msg.to_string().into_bytes())
        }
    }
}

async fn handle(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let resp = match req.uri().path() {
        "/" => match *req.method() {
            Method::GET | Method::HEAD => simple(StatusCode::OK, "text/plain; charset=utf-8", HELLO.as_bytes().to_vec()),
            _ => not_allowed("GET, HEAD"),
        },
        "/echo" => match *req.method() {
            Method::POST => echo(req).await,
            _ => not_allowed("POST"),
        },
        _ => simple(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", b"not found\n".to_vec()),
    };
    Ok(resp)
}

fn parse_port() -> u16 {
    let mut port = std::env::var("PORT").ok();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--port" || a == "-port" || a == "-p" {
            port = args.next();
        } else if let Some(v) = a.strip_prefix("--port=").or_else(|| a.strip_prefix("-port=")) {
            port = Some(v.to_string());
        } else if !a.starts_with('-') {
            port = Some(a);
        } else {
            eprintln!("usage: rust-echo [--port N]   (env PORT, WORKERS)");
            std::process::exit(2);
        }
    }
    match port {
        None => 8080,
        Some(p) => p.parse().unwrap_or_else(|_| {
            eprintln!("bad port {:?}", p);
            std::process::exit(2)
        }),
    }
}

fn main() {
    let port = parse_port();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Ok(w) = std::env::var("WORKERS") {
        match w.parse::<usize>() {
            Ok(n) if n >= 1 => {
                builder.worker_threads(n);
            }
            _ => {
                eprintln!("bad WORKERS {:?}", w);
                std::process::exit(2);
            }
        }
    }
    let rt = builder.build().expect("tokio runtime");
    rt.block_on(async move {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let make = make_service_fn(|_conn| async { Ok::<_, Infallible>(service_fn(handle)) });
        let server = match Server::try_bind(&addr) {
            Ok(b) => b.tcp_nodelay(true).serve(make),
            Err(e) => {
                eprintln!("bind {}: {}", addr, e);
                std::process::exit(1);
            }
        };
        eprintln!("rust peer listening on {}", addr);
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        if let Err(e) = server.with_graceful_shutdown(shutdown).await {
            eprintln!("server error: {}", e);
            std::process::exit(1);
        }
    });
}
