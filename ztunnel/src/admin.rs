//! The admin side of ztunnel: config dump, held certificates (`/certs`, see
//! [`crate::cert_report`]) and log level on localhost:15000, Prometheus metrics on 15020,
//! readiness on 15021. Runs on the admin runtime, away from the data path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A plain HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// `content-type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// 200 with a text body.
    pub fn text(body: impl Into<String>) -> Self {
        Reply { status: StatusCode::OK, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    /// 200 with a JSON body.
    pub fn json(value: &serde_json::Value) -> Self {
        Reply {
            status: StatusCode::OK,
            content_type: "application/json",
            body: serde_json::to_string_pretty(value).unwrap_or_default(),
        }
    }

    /// `status` with a text body.
    pub fn error(status: StatusCode, body: impl Into<String>) -> Self {
        Reply { status, ..Reply::text(body) }
    }
}

/// Request facts a route needs: method, path, query.
#[derive(Debug)]
pub struct Call<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
}

impl Call<'_> {
    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// Routes a call to a reply.
pub type Routes = Arc<dyn Fn(&Call<'_>) -> Reply + Send + Sync>;

/// Serves `routes` on `listener` until the task is dropped. Bodies are small (dumps, metrics),
/// so each is built whole.
pub async fn serve(listener: TcpListener, routes: Routes) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let routes = routes.clone();
                async move {
                    let call = Call { method: req.method(), path: req.uri().path(), query: req.uri().query() };
                    let reply = routes(&call);
                    let response = Response::builder()
                        .status(reply.status)
                        .header(http::header::CONTENT_TYPE, reply.content_type)
                        .body(Full::new(Bytes::from(reply.body)))
                        .expect("static header names and values");
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// Binds `addr`; a helper so callers learn the port really bound (tests use port 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
