//! Reading what the load generators print: `iperf3 -J`, `wrk`'s text summary and `oha`'s
//! JSON. Each parser refuses a run that reports errors instead of returning a figure that
//! would look like a measurement.

use serde_json::Value;

/// Why a tool's output is not a usable measurement.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The output is not what the tool prints.
    #[error("{tool}: unreadable output ({reason})")]
    Malformed {
        /// The tool.
        tool: &'static str,
        /// What is missing or wrong.
        reason: String,
    },
    /// The tool ran but says the run failed (or partly failed).
    #[error("{tool}: the run failed: {reason}")]
    RunFailed {
        /// The tool.
        tool: &'static str,
        /// The tool's own words, or the error counts.
        reason: String,
    },
}

fn malformed(tool: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError::Malformed { tool, reason: reason.into() }
}

/// Throughput of one `iperf3 -J` client run (all streams together).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf {
    /// Received by the server, bits per second.
    pub bits_per_second: f64,
    /// TCP retransmissions on the sender.
    pub retransmits: u64,
}

/// Parses `iperf3 -c ... -J` output.
pub fn iperf3(json: &str) -> Result<Iperf, ParseError> {
    const T: &str = "iperf3";
    let v: Value = serde_json::from_str(json).map_err(|e| malformed(T, format!("not JSON: {e}")))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(ParseError::RunFailed { tool: T, reason: err.to_owned() });
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .ok_or_else(|| malformed(T, "no end.sum_received.bits_per_second"))?;
    let retransmits = v.pointer("/end/sum_sent/retransmits").and_then(Value::as_u64).unwrap_or(0);
    Ok(Iperf { bits_per_second: bps, retransmits })
}

/// A closed-loop `wrk` run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wrk {
    /// Completed requests.
    pub requests: u64,
    /// `Requests/sec`.
    pub requests_per_second: f64,
}

/// Parses `wrk`'s summary. Socket errors or non-2xx/3xx responses fail the run: a
/// request rate made of errors is not a request rate.
pub fn wrk(text: &str) -> Result<Wrk, ParseError> {
    const T: &str = "wrk";
    let mut requests = None;
    let mut rps = None;
    let mut problems = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = Some(rest.trim().parse::<f64>().map_err(|e| malformed(T, format!("Requests/sec {rest:?}: {e}")))?);
        } else if line.contains(" requests in ") {
            let n = line.split_whitespace().next().unwrap_or_default();
            requests = Some(n.parse::<u64>().map_err(|e| malformed(T, format!("request count {n:?}: {e}")))?);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            let total: u64 = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .map(|n| n.parse::<u64>().map_err(|e| malformed(T, format!("socket errors {rest:?}: {e}"))))
                .sum::<Result<u64, _>>()?;
            if total > 0 {
                problems.push(format!("socket errors:{rest}"));
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            problems.push(format!("{} non-2xx/3xx responses", rest.trim()));
        }
    }
    let requests = requests.ok_or_else(|| malformed(T, "no `N requests in` line"))?;
    let requests_per_second = rps.ok_or_else(|| malformed(T, "no Requests/sec line"))?;
    if !problems.is_empty() {
        return Err(ParseError::RunFailed { tool: T, reason: problems.join("; ") });
    }
    if requests == 0 {
        return Err(ParseError::RunFailed { tool: T, reason: "no request completed".into() });
    }
    Ok(Wrk { requests, requests_per_second })
}

/// An `oha` run (JSON output), latencies in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Oha {
    /// Responses received (every status).
    pub requests: u64,
    /// Achieved rate.
    pub requests_per_second: f64,
    /// Median latency.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// How `oha` reports the requests still in flight at the end of a timed run.
const OHA_DEADLINE: &str = "aborted due to deadline";

/// Parses `oha --output-format json`. Any error or any status other than 200 fails the run.
pub fn oha(json: &str) -> Result<Oha, ParseError> {
    const T: &str = "oha";
    let v: Value = serde_json::from_str(json).map_err(|e| malformed(T, format!("not JSON: {e}")))?;
    let num = |ptr: &str| v.pointer(ptr).and_then(Value::as_f64).ok_or_else(|| malformed(T, format!("no {ptr}")));
    let errors: Vec<String> = match v.get("errorDistribution").and_then(Value::as_object) {
        // Requests in flight when `-z` runs out are cut off, not failed.
        Some(m) => m.iter().filter(|(k, _)| *k != OHA_DEADLINE).map(|(k, n)| format!("{n} × {k}")).collect(),
        None => return Err(malformed(T, "no errorDistribution")),
    };
    let codes = v
        .get("statusCodeDistribution")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed(T, "no statusCodeDistribution"))?;
    let mut requests = 0;
    let mut bad = errors;
    for (code, n) in codes {
        let n = n.as_u64().ok_or_else(|| malformed(T, format!("status {code} count is not a number")))?;
        requests += n;
        if code != "200" {
            bad.push(format!("{n} × status {code}"));
        }
    }
    if !bad.is_empty() {
        return Err(ParseError::RunFailed { tool: T, reason: bad.join("; ") });
    }
    if requests == 0 {
        return Err(ParseError::RunFailed { tool: T, reason: "no response".into() });
    }
    Ok(Oha {
        requests,
        requests_per_second: num("/summary/requestsPerSec")?,
        p50: num("/latencyPercentiles/p50")?,
        p90: num("/latencyPercentiles/p90")?,
        p99: num("/latencyPercentiles/p99")?,
        p999: num("/latencyPercentiles/p99.9")?,
    })
}

#[cfg(test)]
mod tests;
