//! The chart's history: one sample of the pipeline's throughput and lag every [`EVERY_MS`],
//! the last hour of them, in the console server's memory.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::Value;

use crate::status::PipelineStatus;

/// How often a sample is kept.
pub(super) const EVERY_MS: u64 = 2_000;
/// How long samples are kept.
const KEPT_MS: u64 = 3_600_000;

/// One point of the chart.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Sample {
    /// When (ms since the epoch).
    t_ms: u64,
    /// Documents committed per second, over all captures, since the sample before.
    documents_per_second: Option<f64>,
    /// Rows backfilled per second, over all backfilling bindings.
    rows_per_second: f64,
    /// The largest capture lag, in seconds.
    lag_seconds: Option<f64>,
    /// The largest materialization lag, in lines of a capture's log.
    behind_lines: u64,
    /// Documents committed in all: the next sample's rate is taken against it.
    #[serde(skip)]
    documents: u64,
}

/// The samples of the last hour, oldest first.
#[derive(Debug, Default)]
pub(super) struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Takes in a status read at `now_ms`; keeps it when [`EVERY_MS`] passed since the last
    /// kept sample. Returns the sample, kept or not (the page shows the latest figures).
    pub(super) fn observe(&mut self, status: &PipelineStatus, now_ms: u64) -> Value {
        let documents: u64 = status.captures.iter().map(|c| c.documents).sum();
        let last = self.samples.back();
        let documents_per_second = last.filter(|l| now_ms > l.t_ms).map(|l| {
            documents.saturating_sub(l.documents) as f64 * 1000.0 / (now_ms - l.t_ms) as f64
        });
        let sample = Sample {
            t_ms: now_ms,
            documents_per_second,
            rows_per_second: status
                .captures
                .iter()
                .flat_map(|c| &c.bindings)
                .filter_map(|b| b.rows_per_second)
                .sum(),
            lag_seconds: status
                .captures
                .iter()
                .filter_map(|c| c.lag_seconds)
                .reduce(f64::max),
            behind_lines: status
                .materializations
                .iter()
                .flat_map(|m| &m.tables)
                .map(|t| t.lag_lines)
                .max()
                .unwrap_or(0),
            documents,
        };
        let json = serde_json::to_value(&sample).unwrap_or_default();
        if last.is_none_or(|l| now_ms >= l.t_ms + EVERY_MS) {
            self.samples.push_back(sample);
            while self
                .samples
                .front()
                .is_some_and(|s| s.t_ms + KEPT_MS < now_ms)
            {
                self.samples.pop_front();
            }
        }
        json
    }

    /// The kept samples, oldest first.
    pub(super) fn to_json(&self) -> Value {
        serde_json::to_value(&self.samples).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::CaptureStatus;

    fn status(documents: u64) -> PipelineStatus {
        PipelineStatus {
            captures: vec![CaptureStatus {
                capture: "c".into(),
                units: 1,
                documents,
                committed_at_ms: None,
                lag_seconds: Some(0.5),
                compaction: None,
                bindings: vec![],
            }],
            materializations: vec![],
            requests: vec![],
        }
    }

    #[test]
    fn samples_are_kept_every_two_seconds_for_an_hour_with_their_rate() {
        let mut h = History::default();
        let start = 10_000_000;
        h.observe(&status(0), start);
        // A read between two kept samples shows its figures but is not kept.
        let between = h.observe(&status(500), start + 1_000);
        assert_eq!(between["documents_per_second"], 500.0);
        let kept = h.observe(&status(1_000), start + 2_000);
        assert_eq!(kept["documents_per_second"], 500.0);
        assert_eq!(h.samples.len(), 2);
        for i in 2..2_000 {
            h.observe(&status(1_000), start + i * EVERY_MS);
        }
        let kept = h.samples.len() as u64;
        assert_eq!(kept, KEPT_MS / EVERY_MS + 1, "an hour of samples");
    }
}
