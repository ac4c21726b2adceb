//! Real clients and servers started inside a namespace: `curl`, `iperf3`, and the harness's
//! own HTTP server, each bounded in time.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::Error;
use crate::http::HttpServer;
use crate::netns::Netns;
use crate::process::{Output, Process};

/// How long a server may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound for an HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Totals of one `iperf3` client run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfReport {
    /// Bytes the client sent.
    pub sent_bytes: u64,
    /// Bytes the server received.
    pub received_bytes: u64,
    /// Receive throughput.
    pub bits_per_second: f64,
}

impl Netns {
    /// Runs `curl -sS --max-time <timeout> <extra args> <url>` here; inspect the output yourself
    /// (a failing request is not an error, so denial tests can assert on it).
    pub fn curl(&self, url: &str, extra_args: &[&str], timeout: Duration) -> Result<Output, Error> {
        let max = format!("{:.3}", timeout.as_secs_f64());
        let mut argv = vec!["curl", "-sS", "--max-time", &max];
        argv.extend_from_slice(extra_args);
        argv.push(url);
        // curl enforces --max-time itself; the outer bound only catches a hung process.
        self.exec(argv, timeout + Duration::from_secs(5))
    }

    /// GETs `url` with `curl` and returns the body; a failed request is an error.
    pub fn http_get(&self, url: &str) -> Result<String, Error> {
        Ok(self.curl(url, &["--fail"], HTTP_TIMEOUT)?.ok()?.stdout)
    }

    /// Starts the harness's HTTP server here (see [`HttpServer`]); ready when this returns.
    pub fn http_server(&self, port: u16, label: &str) -> Result<HttpServer, Error> {
        HttpServer::start(self, port, label)
    }

    /// Starts the harness's HTTP/2 cleartext server here (see [`crate::h2c::H2cServer`]).
    pub fn h2c_server(&self, port: u16, label: &str) -> Result<crate::h2c::H2cServer, Error> {
        crate::h2c::H2cServer::start(self, port, label)
    }

    /// Starts the harness's gRPC `shop.Echo` server here (see [`crate::grpc::GrpcServer`]).
    pub fn grpc_server(&self, port: u16, label: &str) -> Result<crate::grpc::GrpcServer, Error> {
        crate::grpc::GrpcServer::start(self, port, label)
    }

    /// Starts `iperf3 -s -p <port>` here and waits until it listens.
    pub fn iperf3_server(&self, port: u16) -> Result<Process, Error> {
        let port = port.to_string();
        // --forceflush: the log is a file, and the readiness line must not sit in a buffer.
        let server = self.spawn(["iperf3", "-s", "-p", &port, "--forceflush"])?;
        server.wait_for_log("Server listening", READY_TIMEOUT)?;
        Ok(server)
    }

    /// Runs an `iperf3` client here against `server:port` for `seconds` and returns its totals.
    pub fn iperf3_client(&self, server: IpAddr, port: u16, seconds: u32) -> Result<IperfReport, Error> {
        let (port, secs, host) = (port.to_string(), seconds.max(1).to_string(), server.to_string());
        let out = self.exec(
            ["iperf3", "-c", &host, "-p", &port, "-t", &secs, "-J"],
            Duration::from_secs(u64::from(seconds) + 15),
        )?;
        // On failure iperf3 still prints JSON, with an `error` field that names the cause.
        let report = parse_iperf(&out.stdout)?;
        out.ok()?;
        Ok(report)
    }
}

fn parse_iperf(json: &str) -> Result<IperfReport, Error> {
    let bad = |reason: String| Error::ToolOutput { tool: "iperf3", reason };
    let v: Value = serde_json::from_str(json).map_err(|e| bad(format!("not JSON ({e}): {json}")))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(bad(format!("iperf3 reported: {err}")));
    }
    let end = v.get("end").ok_or_else(|| bad("no `end` section".into()))?;
    let num = |section: &str, field: &str| {
        end.get(section)
            .and_then(|s| s.get(field))
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(format!("no end.{section}.{field}")))
    };
    Ok(IperfReport {
        sent_bytes: num("sum_sent", "bytes")? as u64,
        received_bytes: num("sum_received", "bytes")? as u64,
        bits_per_second: num("sum_received", "bits_per_second")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_totals_and_errors() {
        let ok = r#"{"end":{"sum_sent":{"bytes":1000,"bits_per_second":8000.0},
                     "sum_received":{"bytes":900,"bits_per_second":7200.5}}}"#;
        let r = parse_iperf(ok).unwrap();
        assert_eq!((r.sent_bytes, r.received_bytes), (1000, 900));
        assert_eq!(r.bits_per_second, 7200.5);
        let err = parse_iperf(r#"{"error":"unable to connect to server: Connection refused"}"#).unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
        let err = parse_iperf(r#"{"end":{}}"#).unwrap_err();
        assert!(err.to_string().contains("end.sum_sent.bytes"), "{err}");
    }
}
