//! How long and how hard the data-plane scenarios (`l4`, `l7`) drive each path: the same
//! rounds, run lengths, open-loop rate and connections for both, so their figures compare.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Rounds, run lengths and load of one data-plane scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Rounds per path.
    pub rounds: usize,
    /// Seconds of each fixed-length run (throughput, closed loop, new connections).
    pub run_secs: u32,
    /// Seconds of each open-loop run.
    pub open_loop_secs: u32,
    /// Open-loop rate, requests per second.
    pub rate: u32,
    /// Connections of the HTTP load generators.
    pub connections: u32,
}

impl Load {
    /// The full run (`README.md`'s numbers).
    pub fn full() -> Load {
        Load { rounds: 5, run_secs: 10, open_loop_secs: 15, rate: 1000, connections: 10 }
    }

    /// `--quick`: fewer, shorter rounds.
    pub fn quick() -> Load {
        Load { rounds: 3, run_secs: 3, open_loop_secs: 5, ..Load::full() }
    }

    /// The report's record of this load (and of the server's response size).
    pub fn report_settings(&self) -> BTreeMap<String, Value> {
        [
            ("run_secs", json!(self.run_secs)),
            ("open_loop_secs", json!(self.open_loop_secs)),
            ("open_loop_rate", json!(self.rate)),
            ("http_connections", json!(self.connections)),
            ("response_bytes", json!(crate::serve::BODY_BYTES)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// How long one run may take before it is given up: the longer run plus slack.
    pub fn run_limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.run_secs.max(self.open_loop_secs)) + 30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_is_shorter_at_the_same_load() {
        let (full, quick) = (Load::full(), Load::quick());
        assert!(quick.rounds < full.rounds && quick.run_secs < full.run_secs);
        assert!(quick.open_loop_secs < full.open_loop_secs);
        assert_eq!((quick.rate, quick.connections), (full.rate, full.connections));
        let s = full.report_settings();
        assert_eq!(s["open_loop_rate"], json!(1000));
        assert_eq!(s["http_connections"], json!(10));
    }
}
