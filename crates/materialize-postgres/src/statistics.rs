//! The planner's statistics of the tables a materialization writes.
//!
//! A batch joins its staged rows with the table on the key, as a nested loop over the
//! key's index ([`crate`]'s session options turn hash and merge joins off). PostgreSQL
//! picks the loop's inner side from the table's statistics, scaled by its current size:
//! `reltuples / relpages` rows a page. When those were taken while the table held a row
//! or two (an `ANALYZE`, or an `ALTER TABLE` that rewrote it, right after it was created),
//! a table the stream has since grown to thousands of rows still plans as a few, and the
//! loop reads the whole table once per staged row: 15 to 50 ms a statement at 1,000 to
//! 2,000 rows, measured, and growing with the table until autovacuum analyzes it (up to
//! `autovacuum_naptime` later, a minute by default). Streaming latency in the first
//! seconds of a new table went to 150 to 270 ms (BENCHMARKS.md).
//!
//! So the materialization counts the rows it writes to each table, and each time that
//! count doubles (from [`FIRST_CHECK`]) it reads the table's `reltuples`: when the
//! statistics count fewer than a quarter of the rows written, it analyzes the table, after
//! the batch has committed and waiting at most [`LOCK_WAIT`] for the lock (a running
//! autovacuum holds it; the next doubling looks again). A table never analyzed
//! (`reltuples` -1) is left alone: the planner then sizes it from its pages. The checks
//! are logarithmic in the rows written, and an `ANALYZE` reads a sample of at most
//! 30,000 rows by default.

use std::collections::HashMap;

use tokio_postgres::Client;

/// Rows written to a table before its statistics are first looked at.
pub const FIRST_CHECK: u64 = 256;

/// How long an `ANALYZE` waits for the table's lock before it is put off.
const LOCK_WAIT: &str = "100ms";

/// Rows written to each table (by qualified name) and when to look next.
#[derive(Debug, Default)]
pub struct Written(HashMap<String, Growth>);

#[derive(Debug)]
struct Growth {
    rows: u64,
    next: u64,
}

impl Written {
    /// Counts `rows` written to `table`; the rows written so far when the count has
    /// reached the next check.
    pub fn add(&mut self, table: &str, rows: u64) -> Option<u64> {
        if rows == 0 {
            return None;
        }
        let growth = self.0.entry(table.to_string()).or_insert(Growth {
            rows: 0,
            next: FIRST_CHECK,
        });
        growth.rows += rows;
        if growth.rows < growth.next {
            return None;
        }
        growth.next = growth.rows.saturating_mul(2);
        Some(growth.rows)
    }
}

/// Analyzes `table` when its statistics count fewer than a quarter of `written` rows;
/// whether it did. Errors are the caller's to ignore: the batch has committed, and a
/// connection that failed fails the next batch.
pub async fn refresh_if_stale(
    client: &Client,
    table: &str,
    written: u64,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT c.reltuples::float8 FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .await;
    let Ok(row) = row else {
        return Ok(false);
    };
    let tuples: f64 = row.get(0);
    #[allow(clippy::cast_precision_loss)] // a row count; its magnitude is what matters
    let stale = tuples >= 0.0 && tuples < written as f64 / 4.0;
    if !stale {
        return Ok(false);
    }
    let analyze = format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_WAIT}'; ANALYZE {table}; COMMIT");
    if let Err(e) = client.batch_execute(&analyze).await {
        client.batch_execute("ROLLBACK").await?;
        return Err(e);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_looked_at_each_time_its_rows_double() {
        let mut w = Written::default();
        assert_eq!(w.add("t", 255), None);
        assert_eq!(w.add("t", 1), Some(256));
        assert_eq!(w.add("t", 255), None);
        assert_eq!(w.add("t", 1), Some(512));
        assert_eq!(w.add("u", 10_000), Some(10_000));
        assert_eq!(w.add("u", 9_999), None);
        assert_eq!(w.add("t", 0), None);
    }
}
