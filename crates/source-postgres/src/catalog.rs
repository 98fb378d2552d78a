//! What the catalog says: capturable tables, their columns and keys, how each key column
//! can be ordered (drives Automatic), and how each type's text becomes JSON.

use std::cmp::Ordering;
use std::collections::HashMap;

use backfill_core::SourceError;
use backfill_core::catalog::{CatalogColumn, CatalogTable, TableParts};
use backfill_core::mode::KeyOrdering;
use backfill_core::source::TableRef;
use serde_json::Value;
use tokio_postgres::Client;

use crate::sql::{self, KeyType};
use crate::value::Kind;

/// A column as the connector uses it.
#[derive(Clone, Debug)]
pub struct Column {
    /// Name.
    pub name: String,
    /// `format_type` spelling.
    pub type_name: String,
    /// Type OID.
    pub type_oid: u32,
    /// NULL allowed.
    pub nullable: bool,
    /// Collation name, for collatable types.
    pub collation: Option<String>,
    /// Whether values may be TOASTed (storage other than plain).
    pub toastable: bool,
    /// How the column orders as a key column.
    pub ordering: KeyOrdering,
    /// `attnum`: never reused, and larger for each column added.
    pub attnum: u64,
    /// Whether the rows already there hold a value in it that no change carried, had it
    /// been added after them: a default (kept as the table's "missing" value, or written
    /// by a rewrite) or an identity ([`CatalogColumn::fills_existing_rows`]).
    pub fills_existing_rows: bool,
}

/// A capturable table.
#[derive(Clone, Debug)]
pub struct Table {
    /// Relation OID.
    pub oid: u32,
    /// Schema and name.
    pub table: TableRef,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// The usable key (primary key, else a unique index on non-null columns), in key order.
    pub key: Vec<String>,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// A partitioned table (`relkind` p): its rows live in its partitions, so chunks read
    /// it without `ONLY`, and the publication publishes its partitions' changes as its own
    /// (`publish_via_partition_root`).
    pub partitioned: bool,
    /// An `UNLOGGED` table: its changes never reach the WAL, so logical replication
    /// cannot carry them (a publication refuses it); `check` and the start refuse it with
    /// the `ALTER TABLE ... SET LOGGED` to run.
    pub unlogged: bool,
    /// Generated (stored) columns, left out of `columns` and of every document: logical
    /// replication does not publish them (before PostgreSQL 18), so a streamed change
    /// could not carry them, and a merged row would keep the value computed from the
    /// backfilled row's other columns. A chunk's `t.*` still returns them; the chunk's
    /// plan skips them.
    pub generated: Vec<String>,
}

impl Table {
    /// Why the stream could never carry this table's changes (or publishing it would
    /// break the application's writes), with the remedy.
    pub fn unstreamable(&self) -> Option<String> {
        let table = crate::sql::qualified(&self.table);
        if self.unlogged {
            return Some(format!(
                "{} is UNLOGGED: its changes never reach the WAL, which logical replication reads; ALTER TABLE {table} SET LOGGED",
                self.table
            ));
        }
        if let Some(k) = self.key.iter().find(|k| self.generated.contains(k)) {
            return Some(format!(
                "{}'s key includes the generated column {k}, which logical replication does not carry (before PostgreSQL 18), so its changes could not be keyed; key the table on stored columns",
                self.table
            ));
        }
        (self.replica_identity == 'n').then(|| {
            format!(
                "{} has REPLICA IDENTITY NOTHING: once published, its UPDATEs and DELETEs fail on the server; ALTER TABLE {table} REPLICA IDENTITY DEFAULT (or FULL)",
                self.table
            )
        })
    }

    /// The types the columns of `key` are cast to in statements (`text` for a column
    /// the catalog lacks).
    pub fn key_types(&self, key: &[String]) -> Vec<KeyType<'_>> {
        key.iter()
            .map(|k| {
                let c = self.column(k);
                KeyType {
                    ty: c.map_or("text", |c| c.type_name.as_str()),
                    collation: c.and_then(|c| c.collation.as_deref()),
                }
            })
            .collect()
    }

    /// Whether an update can omit an unchanged TOASTed value and a key change cannot carry
    /// it (DESIGN.md §5): TOASTable columns under the default replica identity.
    pub fn has_toast_hazard(&self) -> bool {
        self.replica_identity == 'd'
            && !self.key.is_empty()
            && self.columns.iter().any(|c| c.toastable)
    }
}

impl CatalogColumn for Column {
    fn name(&self) -> &str {
        &self.name
    }
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn nullable(&self) -> bool {
        self.nullable
    }
    fn ordering(&self) -> KeyOrdering {
        self.ordering
    }
    fn ordinal(&self) -> Option<u64> {
        Some(self.attnum)
    }
    fn fills_existing_rows(&self) -> bool {
        self.fills_existing_rows
    }
}

impl CatalogTable for Table {
    type Column = Column;

    fn parts(&self) -> TableParts<'_, Column> {
        TableParts::new(&self.table, &self.columns, &self.key)
    }

    /// A keyless table without REPLICA IDENTITY FULL, and TOASTable columns under the
    /// default identity, each with the statement that fixes it.
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.key.is_empty() && self.replica_identity != 'f' {
            warnings.push(format!(
                "no primary key: capturing it needs REPLICA IDENTITY FULL ({}) so deletes and updates carry the whole row",
                sql::replica_identity_full(&self.table)
            ));
        }
        if self.has_toast_hazard() {
            let toast: Vec<&str> = self
                .columns
                .iter()
                .filter(|c| c.toastable)
                .map(|c| c.name.as_str())
                .collect();
            warnings.push(format!(
                "columns {} can be TOASTed: an update that leaves them unchanged omits them, and a key change cannot carry them to the new key; REPLICA IDENTITY FULL avoids both",
                toast.join(", ")
            ));
        }
        warnings
    }
}

/// The connector's own helper tables, hidden from discovery.
pub const WATERMARK_TABLE: &str = "cdc_watermarks";

fn db_err(e: tokio_postgres::Error) -> SourceError {
    crate::conn::db_error(e, "reading the catalog")
}

/// Lists every table the user can read, with columns, keys and key ordering.
pub async fn tables(client: &Client) -> Result<Vec<Table>, SourceError> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, c.relkind = 'p',
                    c.relpersistence = 'u'
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
                AND n.nspname NOT LIKE 'pg\\_temp%'
                AND has_table_privilege(c.oid, 'SELECT')
              ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(db_err)?;
    let mut tables: Vec<Table> = rows
        .iter()
        .filter(|r| r.get::<_, String>(2) != WATERMARK_TABLE)
        .map(|r| Table {
            oid: r.get(0),
            table: TableRef {
                namespace: r.get(1),
                stream: r.get(2),
            },
            columns: Vec::new(),
            key: Vec::new(),
            replica_identity: r.get::<_, String>(3).chars().next().unwrap_or('d'),
            partitioned: r.get(4),
            unlogged: r.get(5),
            generated: Vec::new(),
        })
        .collect();
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let columns = client
        .query(
            "SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, NOT a.attnotnull,
                    CASE WHEN a.attcollation <> 0 THEN (SELECT collname::text FROM pg_collation WHERE oid = a.attcollation) END,
                    t.typstorage <> 'p', a.attgenerated <> '', a.attnum::int,
                    a.atthasmissing OR a.atthasdef OR a.attidentity <> ''
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await
        .map_err(db_err)?;
    let index: HashMap<u32, usize> = tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
    for r in &columns {
        if let Some(&i) = index.get(&r.get::<_, u32>(0)) {
            if r.get::<_, bool>(7) {
                tables[i].generated.push(r.get(1));
                continue;
            }
            tables[i].columns.push(Column {
                name: r.get(1),
                type_name: r.get(2),
                type_oid: r.get(3),
                nullable: r.get(4),
                collation: r.get(5),
                toastable: r.get(6),
                ordering: KeyOrdering::Unorderable,
                attnum: u64::try_from(r.get::<_, i32>(8)).unwrap_or(0),
                fills_existing_rows: r.get(9),
            });
        }
    }
    // Keys: the primary key, else the narrowest unique, non-partial, plain-column index
    // whose columns are all NOT NULL.
    let keys = client
        .query(
            "SELECT i.indrelid,
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord),
                    ARRAY(SELECT a.attnotnull FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord),
                    i.indisprimary, i.indnkeyatts
               FROM pg_index i
              WHERE i.indrelid = ANY($1) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
              ORDER BY i.indrelid, i.indisprimary DESC, i.indnkeyatts, i.indexrelid",
            &[&oids],
        )
        .await
        .map_err(db_err)?;
    for r in &keys {
        let Some(&i) = index.get(&r.get::<_, u32>(0)) else {
            continue;
        };
        if !tables[i].key.is_empty() {
            continue;
        }
        let names: Vec<String> = r.get(1);
        let not_null: Vec<bool> = r.get(2);
        let nkey = usize::try_from(r.get::<_, i16>(4)).unwrap_or(0);
        if names.len() >= nkey && not_null.iter().take(nkey).all(|&b| b) {
            tables[i].key = names.into_iter().take(nkey).collect();
        }
    }
    // Which key types the database can compare (a default btree operator class).
    let orderable: Vec<u32> = client
        .query(
            "SELECT t.oid FROM pg_type t
              WHERE EXISTS (SELECT 1 FROM pg_opclass o JOIN pg_am m ON m.oid = o.opcmethod
                             WHERE m.amname = 'btree' AND o.opcdefault
                               AND (o.opcintype = COALESCE(NULLIF(t.typbasetype, 0), t.oid)
                                    OR (o.opcintype = 'anyarray'::regtype AND t.typcategory = 'A')
                                    OR (o.opcintype = 'anyenum'::regtype AND t.typtype = 'e')
                                    OR (o.opcintype = 'anyrange'::regtype AND t.typtype = 'r')))",
            &[],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in tables.iter_mut().flat_map(|t| t.columns.iter_mut()) {
        c.ordering = if native_order(c).is_some() {
            KeyOrdering::Native
        } else if orderable.contains(&c.type_oid) {
            KeyOrdering::Database
        } else {
            KeyOrdering::Unorderable
        };
    }
    Ok(tables)
}

/// How a column's JSON values compare natively, when they provably order as PostgreSQL's
/// btree does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeOrder {
    /// Integers (JSON numbers without fraction).
    Integer,
    /// numeric: decimal text compared by value; NaN sorts last, as in PostgreSQL.
    Decimal,
    /// Byte order of the JSON string: uuid, bytea hex, text under the C collation.
    Bytes,
    /// `false < true`.
    Bool,
    /// ISO dates and timestamps, with `-infinity`, BC years and years past 9999.
    Temporal,
}

/// The native order of a column's type, if there is one.
pub fn native_order(c: &Column) -> Option<NativeOrder> {
    match c.type_oid {
        20 | 21 | 23 => Some(NativeOrder::Integer),
        1700 => Some(NativeOrder::Decimal),
        16 => Some(NativeOrder::Bool),
        2950 | 17 => Some(NativeOrder::Bytes),
        25 | 1043 if matches!(c.collation.as_deref(), Some("C" | "POSIX")) => {
            Some(NativeOrder::Bytes)
        }
        1082 | 1114 | 1184 => Some(NativeOrder::Temporal),
        _ => None,
    }
}

/// Compares two values of a natively ordered type.
pub fn compare_native(order: NativeOrder, a: &Value, b: &Value) -> Option<Ordering> {
    match order {
        NativeOrder::Integer => Some(compare_decimal(
            a.as_number()?.as_str(),
            b.as_number()?.as_str(),
        )),
        NativeOrder::Decimal => {
            fn text(v: &Value) -> Option<&str> {
                match v {
                    Value::Number(n) => Some(n.as_str()),
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                }
            }
            let (a, b) = (text(a)?, text(b)?);
            let rank = |s: &str| match s {
                "-Infinity" => 0,
                "Infinity" => 2,
                "NaN" => 3,
                _ => 1,
            };
            Some(rank(a).cmp(&rank(b)).then_with(|| {
                if rank(a) == 1 {
                    compare_decimal(a, b)
                } else {
                    Ordering::Equal
                }
            }))
        }
        NativeOrder::Bytes => Some(a.as_str()?.as_bytes().cmp(b.as_str()?.as_bytes())),
        NativeOrder::Bool => Some(a.as_bool()?.cmp(&b.as_bool()?)),
        NativeOrder::Temporal => Some(temporal_key(a.as_str()?).cmp(&temporal_key(b.as_str()?))),
    }
}

/// Compares decimal strings by value.
pub fn compare_decimal(a: &str, b: &str) -> Ordering {
    fn parse(s: &str) -> (bool, &str, &str) {
        let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        let i = i.trim_start_matches('0');
        let f = f.trim_end_matches('0');
        let zero = i.is_empty() && f.is_empty();
        (neg && !zero, i, f)
    }
    let (an, ai, af) = parse(a);
    let (bn, bi, bf) = parse(b);
    let magnitude = ai
        .len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(bi))
        .then_with(|| af.cmp(bf));
    match (an, bn) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
    }
}

/// A sortable form of a to_jsonb date/timestamp: (era, year, rest) with ±infinity at the ends.
fn temporal_key(s: &str) -> (i8, i64, &str) {
    match s {
        "-infinity" => return (-2, 0, ""),
        "infinity" => return (2, 0, ""),
        _ => {}
    }
    let (body, bc) = s.strip_suffix(" BC").map_or((s, false), |b| (b, true));
    let (year, rest) = body.split_once('-').unwrap_or((body, ""));
    let year: i64 = year.parse().unwrap_or(0);
    if bc {
        // 0044 BC is before 0043 BC; within a BC year the rest still orders forward.
        (-1, -year, rest)
    } else {
        (0, year, rest)
    }
}

/// Type facts needed to turn text into JSON.
#[derive(Clone, Debug, Default)]
pub struct Types {
    kinds: HashMap<u32, Kind>,
    names: HashMap<u32, String>,
}

impl Types {
    /// Loads every type of the database.
    pub async fn load(client: &Client) -> Result<Self, SourceError> {
        let rows = client
            .query(
                "SELECT oid, typtype::text, typbasetype, typelem, typcategory::text, typdelim::text, format_type(oid, NULL)
                   FROM pg_type",
                &[],
            )
            .await
            .map_err(db_err)?;
        struct Raw {
            typtype: char,
            base: u32,
            elem: u32,
            category: char,
            delim: char,
        }
        let raw: HashMap<u32, Raw> = rows
            .iter()
            .map(|r| {
                let ch = |i: usize| r.get::<_, String>(i).chars().next().unwrap_or(' ');
                (
                    r.get(0),
                    Raw {
                        typtype: ch(1),
                        base: r.get(2),
                        elem: r.get(3),
                        category: ch(4),
                        delim: ch(5),
                    },
                )
            })
            .collect();
        fn resolve(oid: u32, raw: &HashMap<u32, Raw>, depth: u8) -> Kind {
            if let Some(k) = Kind::builtin(oid) {
                return k;
            }
            let Some(t) = raw.get(&oid) else {
                return Kind::AskServer;
            };
            if depth > 8 {
                return Kind::AskServer;
            }
            match t.typtype {
                'd' => resolve(t.base, raw, depth + 1),
                'e' | 'r' | 'm' => Kind::Text,
                'c' => Kind::AskServer,
                _ if t.category == 'A' && t.elem != 0 => {
                    let delim = raw.get(&t.elem).map_or(',', |e| e.delim);
                    if delim == ',' {
                        Kind::Array(Box::new(resolve(t.elem, raw, depth + 1)))
                    } else {
                        Kind::AskServer
                    }
                }
                _ if oid < 16_384 => Kind::Text,
                _ => Kind::AskServer,
            }
        }
        let kinds = raw
            .keys()
            .map(|&oid| (oid, resolve(oid, &raw, 0)))
            .collect();
        let names = rows.iter().map(|r| (r.get(0), r.get(6))).collect();
        Ok(Self { kinds, names })
    }

    /// How values of `oid` become JSON.
    pub fn kind(&self, oid: u32) -> Kind {
        Kind::builtin(oid)
            .or_else(|| self.kinds.get(&oid).cloned())
            .unwrap_or(Kind::AskServer)
    }

    /// The type's SQL name, for casts.
    pub fn name(&self, oid: u32) -> Option<&str> {
        self.names.get(&oid).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_compare_by_value() {
        assert_eq!(compare_decimal("10", "9"), Ordering::Greater);
        assert_eq!(compare_decimal("-10", "-9"), Ordering::Less);
        assert_eq!(compare_decimal("1.50", "1.5"), Ordering::Equal);
        assert_eq!(compare_decimal("0.001", "0.01"), Ordering::Less);
        assert_eq!(compare_decimal("-0", "0"), Ordering::Equal);
        assert_eq!(compare_decimal("-0.5", "0.1"), Ordering::Less);
        let d = |a: Value, b: Value| compare_native(NativeOrder::Decimal, &a, &b).unwrap();
        assert_eq!(d(json!("NaN"), json!(1e300)), Ordering::Greater);
        assert_eq!(d(json!("Infinity"), json!("NaN")), Ordering::Less);
        assert_eq!(d(json!("-Infinity"), json!(-1)), Ordering::Less);
    }

    #[test]
    fn temporal_values_compare_as_postgres_orders_them() {
        let t =
            |a: &str, b: &str| compare_native(NativeOrder::Temporal, &json!(a), &json!(b)).unwrap();
        assert_eq!(
            t("2020-01-01T00:00:00", "2020-01-01T00:00:00.5"),
            Ordering::Less
        );
        assert_eq!(
            t("2020-01-01T00:00:00.5", "2020-01-01T00:00:00.25"),
            Ordering::Greater
        );
        assert_eq!(t("10000-01-01", "9999-12-31"), Ordering::Greater);
        assert_eq!(t("0044-03-15 BC", "0001-01-01"), Ordering::Less);
        assert_eq!(t("0044-03-15 BC", "0043-01-01 BC"), Ordering::Less);
        assert_eq!(t("-infinity", "0044-03-15 BC"), Ordering::Less);
        assert_eq!(t("infinity", "10000-01-01"), Ordering::Greater);
    }
}
