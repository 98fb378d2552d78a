//! The runtime's Prometheus page, from the status the console last read: per capture its
//! documents and lag, per binding its backfilled rows and estimate, per materialization
//! table how far it is behind, and the open backfill requests.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::status::PipelineStatus;

type Labels = Vec<(&'static str, String)>;

/// `status` in the Prometheus text format.
pub(super) fn prometheus(status: &PipelineStatus) -> String {
    let documents = Family::<Labels, Counter>::default();
    let lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let rows = Family::<Labels, Counter>::default();
    let estimated = Family::<Labels, Gauge>::default();
    let behind = Family::<Labels, Gauge>::default();
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for c in &status.captures {
        let capture = vec![("capture", c.capture.clone())];
        documents.get_or_create(&capture).inc_by(c.documents);
        if let Some(l) = c.lag_seconds {
            lag.get_or_create(&capture).set(l);
        }
        for b in &c.bindings {
            let labels = vec![
                ("capture", c.capture.clone()),
                ("collection", b.collection.clone()),
            ];
            rows.get_or_create(&labels).inc_by(b.rows);
            if let Some(e) = b.estimated_rows {
                estimated.get_or_create(&labels).set(int(e));
            }
        }
    }
    for m in &status.materializations {
        for t in &m.tables {
            behind
                .get_or_create(&vec![
                    ("materialization", m.materialization.clone()),
                    ("table", t.table.clone()),
                ])
                .set(int(t.lag_lines));
        }
    }
    let open = Gauge::<i64>::default();
    open.set(int(
        status.requests.iter().filter(|r| r.open()).count() as u64
    ));
    let mut registry = Registry::default();
    registry.register(
        "cdc_capture_documents",
        "Documents each capture committed to its collections",
        documents,
    );
    registry.register(
        "cdc_capture_lag_seconds",
        "Seconds between the last committed change's commit at the source and its landing",
        lag,
    );
    registry.register(
        "cdc_binding_backfill_rows",
        "Rows each binding's backfill committed, across restarts",
        rows,
    );
    registry.register(
        "cdc_binding_estimated_rows",
        "The source's estimate of each binding's table size",
        estimated,
    );
    registry.register(
        "cdc_materialization_behind_lines",
        "Lines of its capture's log each destination table has not applied yet",
        behind,
    );
    registry.register(
        "cdc_backfill_requests_open",
        "Backfill requests not carried out yet",
        open,
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}
