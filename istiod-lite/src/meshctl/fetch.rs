//! A small HTTP/1.1 GET client over hyper's connection API: one connection per request,
//! bounded in time, plain `http://` only (the debug and admin ports are plaintext).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long one request may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not a usable `http://host:port/...` URL.
    #[error("{url}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The TCP connection failed.
    #[error("{url}: connecting: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("{url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("{url}: no answer within {:?}", TIMEOUT)]
    Timeout {
        /// The URL.
        url: String,
    },
    /// The answer is not JSON.
    #[error("{url}: the answer is not JSON: {source}")]
    Json {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// A status other than the one expected.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// `base` (e.g. `http://127.0.0.1:15014`) joined with `path`.
pub fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// GETs `url`; returns the status and the body.
pub async fn get(url: &str) -> Result<(u16, Bytes), FetchError> {
    tokio::time::timeout(TIMEOUT, get_inner(url)).await.unwrap_or_else(|_| Err(FetchError::Timeout { url: url.into() }))
}

async fn get_inner(url: &str) -> Result<(u16, Bytes), FetchError> {
    let bad = |why: &str| FetchError::Url { url: url.to_owned(), why: why.to_owned() };
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// URLs are supported"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| FetchError::Connect { url: url.to_owned(), source })?;
    let http = |source| FetchError::Http { url: url.to_owned(), source };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(http)?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::get(path)
        .header(http::header::HOST, uri.authority().map_or(host, |a| a.as_str()))
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad(&e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    driver.abort();
    Ok((status, body))
}

/// GETs `url` and parses a 200 answer as JSON.
pub async fn get_json(url: &str) -> Result<serde_json::Value, FetchError> {
    let (status, body) = get(url).await?;
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        return Err(FetchError::Status { url: url.into(), status, body: text.chars().take(200).collect() });
    }
    serde_json::from_slice(&body).map_err(|source| FetchError::Json { url: url.into(), source })
}
