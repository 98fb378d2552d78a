//! Every statement the PostgreSQL connector builds, each shape unit-tested below.
//!
//! Identifiers are quoted by [`quote`] alone; values in simple-protocol statements are
//! escape-string literals from [`literal`]. Key values are compared after a cast to the
//! key column's own type and collation ([`typed`]), so the server orders them as its
//! index does. Builders take names and type spellings, not catalog types: the catalog
//! room itself quotes through this one.

use crate::position::Lsn;
use backfill_core::source::TableRef;

/// Quotes an identifier: the one place this crate quotes one.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(table: &TableRef) -> String {
    format!("{}.{}", quote(&table.namespace), quote(&table.stream))
}

/// A value as an SQL literal for a simple query: an escape string, so the session's
/// `standard_conforming_strings` does not matter.
pub fn literal(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 3);
    s.push_str("E'");
    for ch in text.chars() {
        match ch {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// A key column's type as statements cast to it: its `format_type` spelling and its
/// collation, if any.
#[derive(Clone, Copy, Debug)]
pub struct KeyType<'a> {
    /// `format_type` spelling (`text`, `numeric(10,2)`).
    pub ty: &'a str,
    /// Collation name, for collatable types.
    pub collation: Option<&'a str>,
}

/// `<text>::text::type COLLATE "c"`, where `text` is a parameter (`$1`) or a literal.
pub fn typed(text: &str, key: KeyType<'_>) -> String {
    collate(format!("{text}::text::{}", key.ty), key)
}

fn collate(expr: String, key: KeyType<'_>) -> String {
    match key.collation {
        Some(coll) => format!("{expr} COLLATE {}", quote(coll)),
        None => expr,
    }
}

/// The `advanced.min_backfill_xid` / `max_backfill_xid` window on `t.xmin`, compared
/// circularly as PostgreSQL compares xids; empty without either.
pub fn xmin_filter(min: Option<u32>, max: Option<u32>) -> String {
    let mut f = String::new();
    if let Some(min) = min {
        f.push_str(&format!(
            " AND ((t.xmin::text::bigint - {min} + 4294967296) % 4294967296) < 2147483648"
        ));
    }
    if let Some(max) = max {
        f.push_str(&format!(
            " AND (({max} - t.xmin::text::bigint + 4294967296) % 4294967296) < 2147483648"
        ));
    }
    f
}

/// What a chunk reads: the table itself (`ONLY`: an inheritance parent's children are
/// tables of their own, published under their own names), or a partitioned table with its
/// partitions, whose changes are published as its own.
pub fn relation(table: &TableRef, partitioned: bool) -> String {
    if partitioned {
        qualified(table)
    } else {
        format!("ONLY {}", qualified(table))
    }
}

/// A keyed chunk: `select` from `relation` ([`relation`]) aliased `t`, after the cursor
/// when `after` holds its key values as [`typed`] expressions, in key order, `rows + 1`
/// at most.
pub fn keyed_scan(
    relation: &str,
    select: &str,
    key: &[String],
    after: Option<&[String]>,
    filter: &str,
    rows: usize,
) -> String {
    keyed_range(relation, select, key, (after, None), filter, rows + 1)
}

/// The rows of one key range of a chunk read on several connections (`scan::ranges`):
/// those after `after` and, with `skip`, after the key `skip` rows past `after` too (read
/// in the same snapshot by an index scan of the key alone), in key order, at most `limit`.
pub fn keyed_range(
    relation: &str,
    select: &str,
    key: &[String],
    (after, skip): (Option<&[String]>, Option<usize>),
    filter: &str,
    limit: usize,
) -> String {
    let cols = key_columns("t", key);
    let mut sql = format!("SELECT {select} FROM {relation} t WHERE true");
    if let Some(after) = after {
        sql.push_str(&format!(" AND ({cols}) > ({})", after.join(", ")));
    }
    if let Some(skip) = skip {
        let probe = key_columns("p", key);
        sql.push_str(&format!(
            " AND ({cols}) > (SELECT {probe} FROM {relation} p WHERE true"
        ));
        if let Some(after) = after {
            sql.push_str(&format!(" AND ({probe}) > ({})", after.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY {probe} OFFSET {skip} LIMIT 1)"));
    }
    sql.push_str(filter);
    sql.push_str(&format!(" ORDER BY {cols} LIMIT {limit}"));
    sql
}

/// `alias."k1", alias."k2"`.
fn key_columns(alias: &str, key: &[String]) -> String {
    key.iter()
        .map(|k| format!("{alias}.{}", quote(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table's size in heap pages.
pub fn relation_pages(table: &TableRef) -> String {
    format!(
        "SELECT (pg_relation_size({}::regclass) / current_setting('block_size')::int)::bigint",
        literal(&qualified(table))
    )
}

/// The planner's rows per page of a table; null before it was first analyzed.
pub fn rows_per_page(table: &TableRef) -> String {
    format!(
        "SELECT CASE WHEN relpages > 0 AND reltuples > 0 THEN (reltuples / relpages)::float8 END \
         FROM pg_class WHERE oid = {}::regclass",
        literal(&qualified(table))
    )
}

/// A physical chunk of a keyless table: the rows after tuple `from` (page, tuple) and
/// before page `end_page`, with each row's `ctid` first.
pub fn page_scan(
    table: &TableRef,
    select: &str,
    from: (u64, u64),
    end_page: u64,
    filter: &str,
) -> String {
    format!(
        "SELECT ctid, {select} FROM ONLY {} t WHERE ctid > '({},{})'::tid AND ctid < '({end_page},0)'::tid{filter}",
        qualified(table),
        from.0,
        from.1,
    )
}

/// Where a batch of keys falls against a window, one row `(above lo, above hi)` per key
/// in order. Parameters: one `text[]` per key column (the keys' values), then the low
/// bound's values when `has_lo`, then the high bound's when `has_hi`; a missing bound
/// answers NULL.
pub fn classify(key: &[KeyType<'_>], has_lo: bool, has_hi: bool) -> String {
    let n = key.len();
    let cols = (0..n)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let typed_cols = key
        .iter()
        .enumerate()
        .map(|(i, k)| collate(format!("u.c{i}::{}", k.ty), *k))
        .collect::<Vec<_>>()
        .join(", ");
    let mut next = n + 1;
    let mut bound = |present: bool| {
        if !present {
            // Typed: a bare NULL column is `text`, which does not read as a bool.
            return "NULL::boolean".to_string();
        }
        let values = key
            .iter()
            .map(|k| {
                let s = typed(&format!("${next}"), *k);
                next += 1;
                s
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("(({typed_cols}) > ({values}))")
    };
    let above_lo = bound(has_lo);
    let above_hi = bound(has_hi);
    let unnest = (0..n)
        .map(|i| format!("${}::text[]", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {above_lo}, {above_hi} FROM unnest({unnest}) WITH ORDINALITY AS u({cols}, ord) ORDER BY ord"
    )
}

/// Starts a chunk's transaction: one snapshot for the rows, the fence and the witness.
pub const START_SNAPSHOT: &str = "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Names the transaction's snapshot so that other connections can read in it while the
/// transaction stays open (`SET TRANSACTION SNAPSHOT`).
pub const EXPORT_SNAPSHOT: &str = "SELECT pg_export_snapshot()";

/// A transaction of another connection that reads in the snapshot `name` exported.
pub fn start_in_snapshot(name: &str) -> String {
    format!(
        "{START_SNAPSHOT}; SET TRANSACTION SNAPSHOT {}",
        literal(name)
    )
}

/// Inside a scan's repeatable-read transaction, after its rows: the fence (the WAL insert
/// position, at or after every commit visible in the snapshot) and the snapshot itself
/// as the witness, as text (the simple protocol's).
pub const FENCE: &str = "SELECT pg_current_wal_insert_lsn()::text, txid_snapshot_xmax(txid_current_snapshot())::text, \
     array_to_string(ARRAY(SELECT txid_snapshot_xip(txid_current_snapshot())), ',')";

/// On a hot standby: the end of the last WAL record replayed, as text (see
/// [`crate::replica`]: read before a chunk's snapshot it is the witness, inside the chunk's
/// transaction after the rows it is the fence). Null on a server not in recovery.
pub const REPLAYED: &str = "SELECT pg_last_wal_replay_lsn()::text";

/// A standby's replay position and its `hot_standby_feedback`, for `check`.
pub const REPLICA_STATUS: &str =
    "SELECT pg_last_wal_replay_lsn()::text, current_setting('hot_standby_feedback')";

/// The cluster's system identifier: a standby has its primary's.
pub const SYSTEM_IDENTIFIER: &str = "SELECT system_identifier FROM pg_control_system()";

/// The watermark after a fence: a transactional logical message committed with a flush.
/// The walsender sends (and reports in keepalives) only flushed WAL, so the commit waits
/// for the flush instead of leaving the stream to wait for the WAL writer
/// (`wal_writer_delay`) before it can reach the fence. With `past`, only when the
/// server's WAL has passed that position (see `scan`'s module docs): a transaction that
/// writes nothing commits without a flush.
pub fn watermark(past: Option<Lsn>) -> String {
    let only_past = past
        .map(|lsn| format!(" WHERE pg_current_wal_insert_lsn() > '{lsn}'::pg_lsn"))
        .unwrap_or_default();
    format!(
        "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_logical_emit_message(true, 'source-postgres', ''){only_past}; COMMIT"
    )
}

/// Connections a regular user can still open: `max_connections` less the superusers'
/// reserve and the client backends already connected.
pub const FREE_CONNECTIONS: &str = "SELECT (current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'))::bigint";

/// Of the columns named `$2` of table `$1`, those that fill the rows already there (a
/// default, kept as the table's "missing" value or written by a rewrite, or an identity),
/// and the table's highest column number (dropped columns included: numbers are never
/// reused).
pub const FILLED_COLUMNS: &str = "SELECT ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attname = ANY($2) AND attnum > 0 AND NOT attisdropped AND (atthasmissing OR atthasdef OR attidentity <> '') ORDER BY attnum), (SELECT max(attnum)::int FROM pg_attribute WHERE attrelid = $1)";

/// The server's version number (150004 for 15.4).
pub const SERVER_VERSION: &str = "SELECT current_setting('server_version_num')::int";

/// A partitioned table's row count: its leaf partitions' `reltuples`, those analyzed.
pub const ESTIMATE_PARTITIONED_ROWS: &str = "SELECT sum(c.reltuples)::bigint FROM pg_partition_tree($1::oid::regclass) p \
     JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf AND c.reltuples >= 0";

/// The planner's row estimate of a relation (parameter: its OID).
pub const ESTIMATE_ROWS: &str =
    "SELECT CASE WHEN reltuples >= 0 THEN reltuples::bigint END FROM pg_class WHERE oid = $1";

/// A relation's pages (parameter: its OID). It takes the relation's lock, so a table held
/// locked makes it wait: it runs under [`ESTIMATE_LOCK_TIMEOUT`].
pub const RELATION_PAGES_BY_OID: &str =
    "SELECT pg_relation_size($1::oid::regclass) / current_setting('block_size')::bigint";

/// How long an estimate waits for a table's lock before it gives up (the scan waits).
pub const ESTIMATE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '200ms'";

/// Pages of a never-analyzed table sampled for its rows per page (a TID range scan reads
/// only them, PostgreSQL 14+).
pub const SAMPLED_PAGES: i64 = 32;

/// The rows on the first `pages` pages of `table` (PostgreSQL 14+: a TID range scan).
pub fn rows_on_first_pages(table: &TableRef, pages: i64) -> String {
    format!(
        "SELECT count(*) FROM {} WHERE ctid < '({pages},0)'::tid",
        qualified(table)
    )
}

/// The statement that creates the publication for these tables (all tables when none);
/// `via_root` (PostgreSQL 13+) publishes a partitioned table's changes as its own.
pub fn create_publication<'a>(
    publication: &str,
    tables: impl Iterator<Item = &'a TableRef>,
    via_root: bool,
) -> String {
    let names: Vec<String> = tables.map(qualified).collect();
    let mut sql = if names.is_empty() {
        format!("CREATE PUBLICATION {}", quote(publication))
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote(publication),
            names.join(", ")
        )
    };
    if via_root {
        sql.push_str(" WITH (publish_via_partition_root = true)");
    }
    sql
}

/// Makes an existing publication publish a partitioned table's changes as its own.
pub fn publish_via_root(publication: &str) -> String {
    format!(
        "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
        quote(publication)
    )
}

/// Adds `tables` (already qualified, comma-separated) to the publication.
pub fn add_to_publication(publication: &str, tables: &str) -> String {
    format!(
        "ALTER PUBLICATION {} ADD TABLE {tables}",
        quote(publication)
    )
}

/// `ALTER TABLE ... REPLICA IDENTITY FULL`: what a keyless table, or one whose TOASTed
/// values must travel whole, needs.
pub fn replica_identity_full(table: &TableRef) -> String {
    format!("ALTER TABLE {} REPLICA IDENTITY FULL", qualified(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> TableRef {
        TableRef::new("sh\"op", "orders")
    }

    const TEXT_C: KeyType<'static> = KeyType {
        ty: "text",
        collation: Some("C"),
    };
    const INT: KeyType<'static> = KeyType {
        ty: "integer",
        collation: None,
    };

    #[test]
    fn identifiers_and_literals_are_escaped() {
        assert_eq!(qualified(&orders()), "\"sh\"\"op\".\"orders\"");
        assert_eq!(literal("a'b\\c"), "E'a''b\\\\c'");
        assert_eq!(literal(""), "E''");
        assert_eq!(literal("ünï"), "E'ünï'");
        assert_eq!(typed("$1", TEXT_C), "$1::text::text COLLATE \"C\"");
        assert_eq!(typed("E'5'", INT), "E'5'::text::integer");
    }

    #[test]
    fn keyed_scans_start_after_the_cursor_and_keep_the_xid_window() {
        let key = ["id".to_string(), "name".to_string()];
        assert_eq!(
            keyed_scan(&relation(&orders(), false), "t.*", &key, None, "", 10),
            "SELECT t.* FROM ONLY \"sh\"\"op\".\"orders\" t WHERE true ORDER BY t.\"id\", t.\"name\" LIMIT 11"
        );
        let after = [typed("E'1'", INT), typed("E'x'", TEXT_C)];
        let filter = xmin_filter(Some(7), None);
        assert_eq!(
            keyed_scan(
                &relation(&orders(), false),
                "t.*",
                &key,
                Some(&after),
                &filter,
                2
            ),
            "SELECT t.* FROM ONLY \"sh\"\"op\".\"orders\" t WHERE true AND (t.\"id\", t.\"name\") > (E'1'::text::integer, E'x'::text::text COLLATE \"C\") AND ((t.xmin::text::bigint - 7 + 4294967296) % 4294967296) < 2147483648 ORDER BY t.\"id\", t.\"name\" LIMIT 3"
        );
        assert_eq!(xmin_filter(None, None), "");
        assert!(xmin_filter(None, Some(9)).contains("((9 - t.xmin"));
    }

    #[test]
    fn the_watermark_is_written_only_past_what_was_delivered_when_one_is_named() {
        let always = "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_logical_emit_message(true, 'source-postgres', ''); COMMIT";
        assert_eq!(watermark(None), always);
        assert_eq!(
            watermark(Some("1/A0".parse().unwrap())),
            always.replace(
                "''); COMMIT",
                "'') WHERE pg_current_wal_insert_lsn() > '1/A0'::pg_lsn; COMMIT"
            )
        );
    }

    #[test]
    fn keyless_scans_read_page_ranges() {
        assert_eq!(
            page_scan(&orders(), "t.*", (3, 4), 35, ""),
            "SELECT ctid, t.* FROM ONLY \"sh\"\"op\".\"orders\" t WHERE ctid > '(3,4)'::tid AND ctid < '(35,0)'::tid"
        );
        assert_eq!(
            relation_pages(&TableRef::new("a", "it's")),
            "SELECT (pg_relation_size(E'\"a\".\"it''s\"'::regclass) / current_setting('block_size')::int)::bigint"
        );
    }

    #[test]
    fn classification_numbers_its_parameters_in_order() {
        assert_eq!(
            classify(&[INT, TEXT_C], true, true),
            "SELECT ((u.c0::integer, u.c1::text COLLATE \"C\") > ($3::text::integer, $4::text::text COLLATE \"C\")), \
             ((u.c0::integer, u.c1::text COLLATE \"C\") > ($5::text::integer, $6::text::text COLLATE \"C\")) \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(c0, c1, ord) ORDER BY ord"
        );
        assert_eq!(
            classify(&[INT], false, true),
            "SELECT NULL::boolean, ((u.c0::integer) > ($2::text::integer)) FROM unnest($1::text[]) WITH ORDINALITY AS u(c0, ord) ORDER BY ord"
        );
    }

    #[test]
    fn publications_name_their_tables() {
        assert_eq!(
            create_publication("p", std::iter::empty(), false),
            "CREATE PUBLICATION \"p\""
        );
        let t = [orders()];
        assert_eq!(
            create_publication("p", t.iter(), false),
            "CREATE PUBLICATION \"p\" FOR TABLE \"sh\"\"op\".\"orders\""
        );
        assert_eq!(
            add_to_publication("p", "\"a\".\"b\""),
            "ALTER PUBLICATION \"p\" ADD TABLE \"a\".\"b\""
        );
        assert_eq!(
            replica_identity_full(&TableRef::new("a", "b")),
            "ALTER TABLE \"a\".\"b\" REPLICA IDENTITY FULL"
        );
    }
}
