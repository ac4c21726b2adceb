//! Medians and spreads of repeated measurements, and how a mesh figure compares with its
//! no-mesh counterpart.

use serde::Serialize;

/// One metric measured over several rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Median of the samples (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// `(max - min) / median`: how far apart the rounds were, relative to the median
    /// (0 when the median is 0).
    pub spread: f64,
    /// The samples in the order they were taken.
    pub samples: Vec<f64>,
}

/// Why samples cannot be summarized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// No sample at all.
    #[error("no samples")]
    Empty,
    /// A sample is NaN or infinite (a failed measurement that slipped through).
    #[error("sample {index} is not a finite number ({value})")]
    NotFinite {
        /// Position of the sample.
        index: usize,
        /// The value.
        value: f64,
    },
}

impl Summary {
    /// Summarizes `samples`.
    pub fn of(samples: &[f64]) -> Result<Summary, StatsError> {
        if samples.is_empty() {
            return Err(StatsError::Empty);
        }
        if let Some((index, &value)) = samples.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(StatsError::NotFinite { index, value });
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let (min, max) = (sorted[0], sorted[n - 1]);
        let spread = if median == 0.0 { 0.0 } else { (max - min) / median.abs() };
        Ok(Summary { median, min, max, spread, samples: samples.to_vec() })
    }
}

/// `mesh / baseline` of two medians; `None` when the baseline is 0.
pub fn ratio(mesh: &Summary, baseline: &Summary) -> Option<f64> {
    (baseline.median != 0.0).then(|| mesh.median / baseline.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.samples, vec![3.0, 1.0, 2.0], "samples keep their order");
        assert_eq!(s.spread, 1.0);
        let s = Summary::of(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!(s.spread, 3.0);
        assert_eq!(Summary::of(&[5.0]).unwrap().spread, 0.0);
    }

    #[test]
    fn bad_samples_are_refused() {
        assert_eq!(Summary::of(&[]), Err(StatsError::Empty));
        assert!(matches!(Summary::of(&[1.0, f64::NAN]), Err(StatsError::NotFinite { index: 1, .. })));
        assert!(matches!(Summary::of(&[f64::INFINITY]), Err(StatsError::NotFinite { index: 0, .. })));
    }

    #[test]
    fn ratio_of_medians() {
        let mesh = Summary::of(&[1.0, 2.0, 3.0]).unwrap();
        let base = Summary::of(&[4.0, 8.0, 100.0]).unwrap();
        assert_eq!(ratio(&mesh, &base), Some(0.25));
        assert_eq!(ratio(&mesh, &Summary::of(&[0.0]).unwrap()), None);
        let zero = Summary::of(&[0.0, 0.0]).unwrap();
        assert_eq!(zero.spread, 0.0);
    }
}
