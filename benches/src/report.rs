//! A scenario's results: the baseline and mesh summaries per metric, their ratios, the
//! targets with pass or miss, and where and when they were measured; printed as a table and
//! written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::{StatsError, Summary, ratio};

/// Which way a target points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Bound {
    /// The value must be at least the target.
    #[serde(rename = ">=")]
    AtLeast,
    /// The value must be at most the target.
    #[serde(rename = "<=")]
    AtMost,
}

/// What a target is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Against {
    /// `mesh median / baseline median`.
    Ratio,
    /// The mesh median itself (a cost with no baseline: CPU, memory, sync time).
    Mesh,
}

/// One target of an issue (6: ztunnel and control plane, 7: waypoint).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// Metric name (a key of `baseline`/`mesh`).
    pub metric: &'static str,
    /// Ratio or absolute.
    pub against: Against,
    /// Direction.
    pub bound: Bound,
    /// The bar.
    pub target: f64,
    /// What it reads in words, for the table and chart.
    pub label: &'static str,
}

/// A target with its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The target.
    #[serde(flatten)]
    pub target: Target,
    /// Measured value (`None` when the metric is missing: a miss).
    pub value: Option<f64>,
    /// Met or not.
    pub pass: bool,
}

impl Target {
    /// Checks `value`.
    pub fn check(&self, value: Option<f64>) -> Outcome {
        let pass = value.is_some_and(|v| match self.bound {
            Bound::AtLeast => v >= self.target,
            Bound::AtMost => v <= self.target,
        });
        Outcome { target: self.clone(), value, pass }
    }
}

/// A metric: its unit and whether bigger is better (for the table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// Unit.
    pub unit: &'static str,
    /// Without the mesh (absent for mesh-only costs).
    pub baseline: Option<Summary>,
    /// With the mesh.
    pub mesh: Summary,
}

/// Everything one run of a scenario produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `--quick`.
    pub quick: bool,
    /// Rounds per side.
    pub rounds: usize,
    /// Metrics in insertion order.
    pub metrics: Vec<(String, Metric)>,
    /// Targets to check.
    pub targets: Vec<Target>,
    /// Free-form notes (how something was measured, what a number includes).
    pub notes: Vec<String>,
    /// Settings of the run (durations, rates, sizes).
    pub settings: BTreeMap<String, Value>,
    /// The issue whose targets these are.
    pub issue: u32,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &str, quick: bool, rounds: usize) -> Report {
        Report { scenario: scenario.into(), quick, rounds, issue: 6, ..Report::default() }
    }

    /// Adds a metric measured on both sides.
    pub fn compare(&mut self, name: &str, unit: &'static str, baseline: Summary, mesh: Summary) {
        self.metrics.push((name.into(), Metric { unit, baseline: Some(baseline), mesh }));
    }

    /// Adds `key` from the rounds' samples of both sides, or a note when one side has none
    /// (every run of it failed).
    pub fn compare_samples(
        &mut self,
        key: &str,
        unit: &'static str,
        baseline: Option<&Vec<f64>>,
        mesh: Option<&Vec<f64>>,
    ) -> Result<(), StatsError> {
        match (baseline, mesh) {
            (Some(b), Some(m)) => self.compare(key, unit, Summary::of(b)?, Summary::of(m)?),
            _ => self.notes.push(format!("{key}: no successful run on one side")),
        }
        Ok(())
    }

    /// Adds a mesh-only metric.
    pub fn cost(&mut self, name: &str, unit: &'static str, mesh: Summary) {
        self.metrics.push((name.into(), Metric { unit, baseline: None, mesh }));
    }

    fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, m)| m)
    }

    /// `mesh / baseline` for `name`.
    pub fn ratio(&self, name: &str) -> Option<f64> {
        let m = self.metric(name)?;
        ratio(&m.mesh, m.baseline.as_ref()?)
    }

    /// Every target with its outcome.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.targets
            .iter()
            .map(|t| {
                let value = match t.against {
                    Against::Ratio => self.ratio(t.metric),
                    Against::Mesh => self.metric(t.metric).map(|m| m.mesh.median),
                };
                t.check(value)
            })
            .collect()
    }

    /// The JSON document: `baseline`, `mesh` and `ratio` objects keyed by metric, targets,
    /// and `meta` (commit, date, machine) as given.
    pub fn to_json(&self, meta: &Value) -> Value {
        let mut baseline = serde_json::Map::new();
        let mut mesh = serde_json::Map::new();
        let mut ratios = serde_json::Map::new();
        let mut units = serde_json::Map::new();
        for (name, m) in &self.metrics {
            units.insert(name.clone(), json!(m.unit));
            mesh.insert(name.clone(), json!(m.mesh));
            if let Some(b) = &m.baseline {
                baseline.insert(name.clone(), json!(b));
                ratios.insert(name.clone(), json!(ratio(&m.mesh, b)));
            }
        }
        json!({
            "scenario": self.scenario,
            "quick": self.quick,
            "rounds": self.rounds,
            "commit": meta["commit"],
            "date": meta["date"],
            "machine": meta["machine"],
            "settings": self.settings,
            "units": units,
            "baseline": baseline,
            "mesh": mesh,
            "ratio": ratios,
            "targets": self.outcomes(),
            "targets_issue": self.issue,
            "notes": self.notes,
        })
    }

    /// The human table: one line per metric, then one per target.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} ({} rounds{})", self.scenario, self.rounds, if self.quick { ", quick" } else { "" });
        let _ = writeln!(
            out,
            "{:<34} {:>10} {:>8} {:>10} {:>8} {:>7}  unit",
            "metric", "no mesh", "spread", "mesh", "spread", "ratio"
        );
        for (name, m) in &self.metrics {
            let (b, bs) = match &m.baseline {
                Some(b) => (fmt_num(b.median), format!("{:.0}%", b.spread * 100.0)),
                None => ("-".into(), String::new()),
            };
            let r =
                m.baseline.as_ref().and_then(|b| ratio(&m.mesh, b)).map(|r| format!("{r:.2}")).unwrap_or("-".into());
            let _ = writeln!(
                out,
                "{name:<34} {b:>10} {bs:>8} {:>10} {:>8} {r:>7}  {}",
                fmt_num(m.mesh.median),
                format!("{:.0}%", m.mesh.spread * 100.0),
                m.unit
            );
        }
        let _ = writeln!(out, "\ntargets (issue {}):", self.issue);
        for o in self.outcomes() {
            let v = o.value.map(fmt_num).unwrap_or_else(|| "missing".into());
            let op = match o.target.bound {
                Bound::AtLeast => ">=",
                Bound::AtMost => "<=",
            };
            let _ = writeln!(
                out,
                "  {:<4} {:<52} {v:>10} {op} {}",
                if o.pass { "pass" } else { "MISS" },
                o.target.label,
                fmt_num(o.target.target)
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// Three significant digits or so, without exponent noise.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::new("l4", true, 3);
        r.compare(
            "rate",
            "req/s",
            Summary::of(&[100.0, 110.0, 90.0]).unwrap(),
            Summary::of(&[40.0, 30.0, 50.0]).unwrap(),
        );
        r.cost("rss", "MB", Summary::of(&[11.0, 13.0, 12.5]).unwrap());
        r.targets = vec![
            Target { metric: "rate", against: Against::Ratio, bound: Bound::AtLeast, target: 0.35, label: "rate" },
            Target { metric: "rss", against: Against::Mesh, bound: Bound::AtMost, target: 12.0, label: "rss" },
            Target { metric: "gone", against: Against::Mesh, bound: Bound::AtMost, target: 1.0, label: "gone" },
        ];
        r
    }

    #[test]
    fn samples_missing_on_one_side_become_a_note_not_a_metric() {
        let mut r = Report::new("l4", true, 3);
        let (b, m) = (vec![100.0, 120.0], vec![30.0, 30.0]);
        r.compare_samples("rate", "req/s", Some(&b), Some(&m)).unwrap();
        r.compare_samples("p99", "ms", Some(&b), None).unwrap();
        assert_eq!(r.ratio("rate"), Some(30.0 / 110.0));
        assert_eq!(r.ratio("p99"), None);
        assert_eq!(r.notes, vec!["p99: no successful run on one side".to_owned()]);
        assert!(r.compare_samples("bad", "ms", Some(&vec![]), Some(&m)).is_err(), "an empty side is an error");
    }

    #[test]
    fn targets_pass_and_miss() {
        let o = report().outcomes();
        assert!(o[0].pass, "0.4 >= 0.35: {o:?}");
        assert_eq!(o[0].value, Some(0.4));
        assert!(!o[1].pass, "12.5 > 12: {o:?}");
        assert!(!o[2].pass && o[2].value.is_none(), "a missing metric is a miss");
    }

    #[test]
    fn json_has_baseline_mesh_ratio_and_targets() {
        let meta = json!({"commit": "abc", "date": "2026-01-01T00:00:00Z", "machine": {"cpus": 2}});
        let j = report().to_json(&meta);
        assert_eq!(j["baseline"]["rate"]["median"], 100.0);
        assert_eq!(j["mesh"]["rate"]["median"], 40.0);
        assert_eq!(j["ratio"]["rate"], 0.4);
        assert!(j["baseline"].get("rss").is_none() && j["mesh"]["rss"]["median"] == 12.5);
        assert_eq!(j["targets"][1]["pass"], false);
        assert_eq!(j["targets"][0][">="], Value::Null);
        assert_eq!(j["targets"][0]["bound"], ">=");
        assert_eq!(j["commit"], "abc");
        assert_eq!(j["rounds"], 3);
    }

    #[test]
    fn table_shows_each_target() {
        let t = report().table();
        assert!(t.contains("pass rate"), "{t}");
        assert!(t.contains("MISS rss"), "{t}");
        assert!(t.contains("0.40"), "{t}");
        assert!(t.contains("targets (issue 6)"), "{t}");
        let mut r = report();
        r.issue = 7;
        assert!(r.table().contains("targets (issue 7)"));
        assert_eq!(r.to_json(&Value::Null)["targets_issue"], 7);
    }
}
