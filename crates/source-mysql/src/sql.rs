//! Every statement the MySQL/MariaDB connector builds, each shape unit-tested below.
//! Identifiers are quoted by [`quote`] alone; key values travel as parameters, cast by
//! [`key_expr`] so that the server compares them as the column (its collation, its type).
//! Fixed reads of the catalog stay beside the code that runs them, as constants.

use backfill_core::catalog::CatalogTable as _;
use backfill_core::source::TableRef;
use mysql_async::Value as MyValue;
use serde_json::Value;

use crate::catalog::{Column, Table};
use crate::conn::Flavor;
use crate::value::{AddressKind, ColType};

/// Quotes an identifier: the one place this crate quotes one.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The SQL expression a key parameter is cast with, so the server compares it as the column.
pub fn key_expr(c: &Column) -> String {
    match &c.ty {
        ColType::Int => "?".into(),
        ColType::Decimal { .. } => "CAST(? AS DECIMAL(65,30))".into(),
        ColType::Date => "CAST(? AS DATE)".into(),
        ColType::DateTime { .. } => "CAST(REPLACE(?, 'T', ' ') AS DATETIME(6))".into(),
        ColType::Timestamp { .. } => {
            "CAST(REPLACE(REPLACE(?, 'T', ' '), 'Z', '') AS DATETIME(6))".into()
        }
        ColType::Time { .. } => "CAST(? AS TIME(6))".into(),
        ColType::Binary { .. } => "FROM_BASE64(?)".into(),
        // MariaDB orders UUIDs by their groups in reverse (time-ordered UUIDs sort by
        // time): only the server's own comparison agrees with the index.
        ColType::Address(AddressKind::Uuid) => "CAST(? AS UUID)".into(),
        ColType::Address(AddressKind::Inet4) => "CAST(? AS INET4)".into(),
        ColType::Address(AddressKind::Inet6) => "CAST(? AS INET6)".into(),
        _ => match (&c.charset, &c.collation) {
            (Some(cs), Some(coll)) => format!("CONVERT(? USING {cs}) COLLATE {coll}"),
            _ => "?".into(),
        },
    }
}

pub fn key_param(v: &Value) -> MyValue {
    match v {
        Value::Number(n) => n.as_i64().map_or_else(
            || {
                n.as_u64()
                    .map_or_else(|| MyValue::Bytes(n.to_string().into_bytes()), MyValue::UInt)
            },
            MyValue::Int,
        ),
        Value::String(s) => MyValue::Bytes(s.clone().into_bytes()),
        Value::Null => MyValue::NULL,
        other => MyValue::Bytes(other.to_string().into_bytes()),
    }
}

/// `db`.`table`.
pub fn qualified(table: &TableRef) -> String {
    format!("{}.{}", quote(&table.namespace), quote(&table.stream))
}

/// `a`, `b`, ...: every column of the table, in table order (the order rows render in).
pub fn select_list(t: &Table) -> String {
    t.columns
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A keyed chunk: the next `rows + 1` rows in key order, after the cursor when `after`
/// (its key values are the parameters, one per key column).
pub fn keyed_scan(t: &Table, key: &[String], after: bool, rows: usize) -> String {
    keyed_range(t, key, (after, false), rows)
}

/// Which keys a bound keeps: those after a key, or those up to and including one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `> key`.
    After,
    /// `<= key`.
    UpTo,
}

/// The key columns compared with a key, in the lexicographic form
/// `k1 > p1 OR (k1 = p1 AND k2 > p2) OR ...` (for [`Bound::UpTo`]: `<` and a last `<=`),
/// each parameter read as its column ([`key_expr`]); its parameters are
/// [`bound_params`]. Not the row constructor `(k1, k2) > (p1, p2)`, which means the same
/// but which MariaDB's optimizer does not take as a range: each chunk of a composite key
/// read the index from its start, and a backfill cost the square of the table.
fn key_bound(t: &Table, key: &[String], bound: Bound) -> String {
    let term = |i: usize, k: &String| {
        let expr = t.column(k).map_or_else(|| "?".into(), key_expr);
        let op = match (bound, i + 1 == key.len()) {
            (Bound::After, _) => ">",
            (Bound::UpTo, true) => "<=",
            (Bound::UpTo, false) => "<",
        };
        let mut parts: Vec<String> = key[..i]
            .iter()
            .map(|e| {
                let expr = t.column(e).map_or_else(|| "?".into(), key_expr);
                format!("{} = {expr}", quote(e))
            })
            .collect();
        parts.push(format!("{} {op} {expr}", quote(k)));
        parts.join(" AND ")
    };
    let terms: Vec<String> = key.iter().enumerate().map(|(i, k)| term(i, k)).collect();
    if terms.len() == 1 {
        terms.concat()
    } else {
        format!(
            "({})",
            terms
                .iter()
                .map(|t| format!("({t})"))
                .collect::<Vec<_>>()
                .join(" OR ")
        )
    }
}

/// The parameters of a [`key_bound`] on the key `values`: each term's, in order (the key's
/// first `i` values, then its `i`th).
pub fn bound_params(values: &[MyValue]) -> Vec<MyValue> {
    (0..values.len())
        .flat_map(|i| values[..=i].iter().cloned())
        .collect()
}

/// The rows of one key range, in key order: after a key (`lower`: its [`bound_params`]
/// first) and up to and including another (`upper`: its parameters next), at most
/// `rows + 1`.
pub fn keyed_range(t: &Table, key: &[String], (lower, upper): (bool, bool), rows: usize) -> String {
    let keys = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let mut sql = format!("SELECT {} FROM {}", select_list(t), qualified(&t.table));
    let bounds: Vec<String> = [
        lower.then(|| key_bound(t, key, Bound::After)),
        upper.then(|| key_bound(t, key, Bound::UpTo)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !bounds.is_empty() {
        sql.push_str(&format!(" WHERE {}", bounds.join(" AND ")));
    }
    sql.push_str(&format!(" ORDER BY {keys} LIMIT {}", rows + 1));
    sql
}

/// Where the next key range of a chunk ends: the key `share` rows after a key (`after`:
/// its [`bound_params`]) or after the table's start, an index-only read of `share` keys;
/// no row past the table's end. Each cut is read from the one before it, so the cuts of a
/// chunk cost one read of its keys, whatever the number of ranges.
pub fn range_cut(t: &Table, key: &[String], after: bool, share: usize) -> String {
    let keys = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let filter = if after {
        format!(" WHERE {}", key_bound(t, key, Bound::After))
    } else {
        String::new()
    };
    format!(
        "SELECT {keys} FROM {}{filter} ORDER BY {keys} LIMIT {}, 1",
        qualified(&t.table),
        share.max(1) - 1
    )
}

/// A keyless table's every row, read once inside one snapshot.
pub fn keyless_scan(t: &Table) -> String {
    format!("SELECT {} FROM {}", select_list(t), qualified(&t.table))
}

/// A keyless scan's connection waits for its reader between chunks: the server must wait
/// to write rather than drop it (`net_write_timeout` is 60 s by default).
pub const PATIENT_WRITES: &str = "SET SESSION net_write_timeout = 31536000";

/// Where each of `keys` key tuples falls against a window: one row per key of
/// `(above lo, above hi)` as 0/1. Parameters per key: the key then `lo` (when `has_lo`),
/// the key then `hi` (when `has_hi`).
pub fn classify(cols: &[Column], keys: usize, has_lo: bool, has_hi: bool) -> String {
    let tuple = cols.iter().map(key_expr).collect::<Vec<_>>().join(", ");
    let above = format!("(({tuple}) > ({tuple}))");
    let lo = if has_lo { above.as_str() } else { "1" };
    let hi = if has_hi { above.as_str() } else { "0" };
    vec![format!("SELECT {lo}, {hi}"); keys].join(" UNION ALL ")
}

/// MySQL: waits until every transaction of the GTID set parameter has committed.
pub const WAIT_FOR_GTIDS: &str = "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, 30)";

/// A replica's replication status (one row naming its source, or none).
pub fn replica_status(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "SHOW SLAVE STATUS",
        Flavor::MySql => "SHOW REPLICA STATUS",
    }
}

/// On a replica: waits until the GTIDs of the first parameter are committed there, for at
/// most the second's seconds; 0 when they are (MariaDB returns -1 on a timeout, MySQL 1).
pub fn replica_wait(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "SELECT MASTER_GTID_WAIT(?, ?)",
        Flavor::MySql => "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)",
    }
}

/// The GTIDs a replica has applied, as text.
pub fn applied_gtids(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "SELECT @@gtid_slave_pos",
        Flavor::MySql => "SELECT @@gtid_executed",
    }
}

/// The server's `server_id`, and its `server_uuid` where it has one (MySQL).
pub fn server_identity(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "SELECT @@server_id, NULL",
        Flavor::MySql => "SELECT @@server_id, @@server_uuid",
    }
}

/// Starts a consistent snapshot; `with_position` (MariaDB's primary) reads, in the same
/// round trip, the binlog position the snapshot sees (two result sets: the START's, then
/// the status rows).
pub fn start_snapshot(with_position: bool) -> &'static str {
    if with_position {
        "START TRANSACTION WITH CONSISTENT SNAPSHOT; SHOW STATUS LIKE 'binlog_snapshot_%'"
    } else {
        "START TRANSACTION WITH CONSISTENT SNAPSHOT"
    }
}

/// The binlog's end. MySQL 8.2 renamed `SHOW MASTER STATUS` (and 8.4 removed the old
/// name); [`LEGACY_BINLOG_STATUS`] serves older MySQL.
pub fn binlog_status(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => LEGACY_BINLOG_STATUS,
        Flavor::MySql => "SHOW BINARY LOG STATUS",
    }
}

/// The binlog's end on MariaDB and MySQL before 8.2.
pub const LEGACY_BINLOG_STATUS: &str = "SHOW MASTER STATUS";

/// The settings capture depends on, in one row: log_bin, binlog_format,
/// binlog_row_image, binlog_row_metadata, and the flavor's compression switch.
pub fn binlog_settings(flavor: Flavor) -> String {
    let compression = match flavor {
        Flavor::MariaDb => "@@log_bin_compress",
        Flavor::MySql => "@@binlog_transaction_compression",
    };
    format!(
        "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, {compression}"
    )
}

/// MariaDB: the GTID state at a binlog file and offset (parameters).
pub const GTID_STATE_AT: &str = "SELECT BINLOG_GTID_POS(?, ?)";

/// The binlog files the server holds.
pub const BINARY_LOGS: &str = "SHOW BINARY LOGS";

/// The table's row estimate (parameters: database, table).
pub const ESTIMATE_ROWS: &str =
    "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_core::row::QuotedName;

    fn column(name: &str, ty: ColType, collation: Option<&str>) -> Column {
        Column {
            name: name.into(),
            column_type: String::new(),
            data_type: String::new(),
            nullable: false,
            charset: collation.map(|_| "utf8mb4".into()),
            collation: collation.map(Into::into),
            ty,
            quoted: QuotedName::new(name),
        }
    }

    fn table() -> Table {
        Table {
            table: TableRef::new("shop", "or`ders"),
            columns: vec![
                column("id", ColType::Int, None),
                column("name", ColType::Json, Some("utf8mb4_bin")),
            ],
            key: vec!["id".into(), "name".into()],
        }
    }

    #[test]
    fn identifiers_are_quoted_and_backticks_doubled() {
        assert_eq!(qualified(&TableRef::new("a`b", "c")), "`a``b`.`c`");
        assert_eq!(select_list(&table()), "`id`, `name`");
    }

    #[test]
    fn keyed_scans_start_after_the_cursor_in_the_columns_collation() {
        let t = table();
        assert_eq!(
            keyed_scan(&t, &t.key, false, 10),
            "SELECT `id`, `name` FROM `shop`.`or``ders` ORDER BY `id`, `name` LIMIT 11"
        );
        assert_eq!(
            keyed_scan(&t, &t.key, true, 10),
            "SELECT `id`, `name` FROM `shop`.`or``ders` WHERE ((`id` > ?) OR (`id` = ? AND `name` > CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin)) ORDER BY `id`, `name` LIMIT 11"
        );
        assert_eq!(
            keyed_range(&t, &t.key, (true, true), 4),
            "SELECT `id`, `name` FROM `shop`.`or``ders` WHERE ((`id` > ?) OR (`id` = ? AND `name` > CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin)) AND ((`id` < ?) OR (`id` = ? AND `name` <= CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin)) ORDER BY `id`, `name` LIMIT 5"
        );
        assert_eq!(
            bound_params(&[MyValue::Int(1), MyValue::Int(2), MyValue::Int(3)]),
            [1, 1, 2, 1, 2, 3].map(MyValue::Int)
        );
        assert_eq!(
            range_cut(&t, &t.key, false, 10),
            "SELECT `id`, `name` FROM `shop`.`or``ders` ORDER BY `id`, `name` LIMIT 9, 1"
        );
        assert_eq!(
            keyless_scan(&t),
            "SELECT `id`, `name` FROM `shop`.`or``ders`"
        );
    }

    #[test]
    fn classification_asks_one_row_per_key() {
        let cols = [column("d", ColType::Date, None)];
        assert_eq!(
            classify(&cols, 2, true, false),
            "SELECT ((CAST(? AS DATE)) > (CAST(? AS DATE))), 0 UNION ALL SELECT ((CAST(? AS DATE)) > (CAST(? AS DATE))), 0"
        );
        assert_eq!(classify(&cols, 1, false, false), "SELECT 1, 0");
    }

    #[test]
    fn statements_differ_by_flavor_where_the_servers_do() {
        assert!(start_snapshot(true).contains("binlog_snapshot_%"));
        assert!(!start_snapshot(false).contains("SHOW"));
        assert_eq!(binlog_status(Flavor::MySql), "SHOW BINARY LOG STATUS");
        assert!(binlog_settings(Flavor::MariaDb).ends_with("@@log_bin_compress"));
        assert!(binlog_settings(Flavor::MySql).ends_with("@@binlog_transaction_compression"));
    }

    #[test]
    fn key_parameters_keep_integers_and_send_text_as_bytes() {
        assert_eq!(key_param(&serde_json::json!(-3)), MyValue::Int(-3));
        assert_eq!(
            key_param(&serde_json::json!(u64::MAX)),
            MyValue::UInt(u64::MAX)
        );
        assert_eq!(
            key_param(&serde_json::json!("x")),
            MyValue::Bytes(b"x".to_vec())
        );
        assert_eq!(key_param(&Value::Null), MyValue::NULL);
    }
}
