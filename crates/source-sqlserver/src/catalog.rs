//! The catalog: user tables, their columns and keys, and their CDC capture instances.
//!
//! A table may have up to two capture instances (SQL Server's way of following DDL: the
//! user creates a second instance with the new column list, and drops the first once
//! consumers moved). [`Table::instance_for`] picks the one to read at a position:
//! **the newest instance that covers it**, where an instance covers position `p` (every
//! change after `p` delivered already) when its low end (`sys.fn_cdc_get_min_lsn`) is at or
//! below `p + 1`. A newer instance that starts later takes over at its start LSN, so the
//! stream never reads one transaction from two instances. Documents take the columns of
//! the instance they were read from, by name: a column the instance does not capture is
//! absent, never misaligned.

use backfill_core::SourceError;
use backfill_core::catalog::{CatalogColumn, CatalogTable, TableParts};
use backfill_core::mode::KeyOrdering;
use backfill_core::source::TableRef;

use crate::conn::{Client, column_i64, column_lsn, column_string, query_rows};
use crate::position::Lsn;
use crate::value::{SqlType, Typed};

/// A column as the connector uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type as the database spells it (`nvarchar(50)`, `decimal(10,2)`).
    pub type_name: String,
    /// NULL allowed.
    pub nullable: bool,
    /// How values are read and rendered.
    pub ty: SqlType,
    /// `sys.columns.max_length` (-1 for `max` types).
    pub max_length: i16,
    /// Ordinal: `column_id` in the table, `column_ordinal` in a capture instance (the bit
    /// position in `__$update_mask`).
    pub ordinal: i32,
}

/// A CDC capture instance of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureInstance {
    /// Its name (`dbo_orders`).
    pub name: String,
    /// Lowest LSN it can still return (`sys.fn_cdc_get_min_lsn`): its start, or later after
    /// cleanup.
    pub min_lsn: Lsn,
    /// LSN from which it captures (`cdc.change_tables.start_lsn`).
    pub start_lsn: Lsn,
    /// Captured columns in capture order, typed as the change table stores them.
    pub columns: Vec<Column>,
    /// Whether its change table has `__$command_id` (read directly, ordered by it).
    pub has_command_id: bool,
    /// The gating role, if any (members only may read the changes).
    pub role: Option<String>,
}

/// A user table.
#[derive(Clone, Debug)]
pub struct Table {
    /// Schema and table.
    pub table: TableRef,
    /// Columns in table order (computed columns excluded: CDC records them as NULL).
    pub columns: Vec<Column>,
    /// The usable key: the primary key, else the first unique index on NOT NULL columns.
    pub key: Vec<String>,
    /// Capture instances, oldest first.
    pub instances: Vec<CaptureInstance>,
}

impl Table {
    /// The instance to read changes after `position` from: the newest that covers it; or,
    /// when the table was not tracked at `position` at all (every instance started later and
    /// none was cleaned up), the oldest: the change tables never held the changes before its
    /// start, so none can have been cleaned away (a binding added since is backfilled).
    /// `None` means cleanup ran past the position: it is lost.
    pub fn instance_for(&self, position: Lsn) -> Option<&CaptureInstance> {
        let next = position.increment();
        self.instances
            .iter()
            .filter(|ci| ci.min_lsn <= next)
            .max_by_key(|ci| ci.start_lsn)
            .or_else(|| {
                self.instances
                    .iter()
                    .min_by_key(|ci| ci.start_lsn)
                    .filter(|ci| ci.min_lsn == ci.start_lsn && ci.start_lsn > next)
            })
    }

    /// The first instance newer than `current` that starts after `position`: the stream
    /// switches to it at its start LSN.
    pub fn next_instance(&self, current: &CaptureInstance) -> Option<&CaptureInstance> {
        self.instances
            .iter()
            .filter(|ci| ci.start_lsn > current.start_lsn)
            .min_by_key(|ci| ci.start_lsn)
    }

    /// The newest instance (what a backfill starting now reads alongside).
    pub fn newest_instance(&self) -> Option<&CaptureInstance> {
        self.instances.iter().max_by_key(|ci| ci.start_lsn)
    }

    /// Columns a backfill reads: those the newest capture instance captures, so backfilled
    /// and streamed documents have the same columns.
    pub fn captured_columns(&self) -> Vec<Column> {
        match self.newest_instance() {
            Some(ci) => self
                .columns
                .iter()
                .filter(|c| ci.columns.iter().any(|cc| cc.name == c.name))
                .cloned()
                .collect(),
            None => self.columns.clone(),
        }
    }
}

impl Typed for Column {
    fn name(&self) -> &str {
        &self.name
    }
    fn sql_type(&self) -> &SqlType {
        &self.ty
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
        if self.ty.compares_natively() {
            KeyOrdering::Native
        } else if self.ty.server_orderable() {
            KeyOrdering::Database
        } else {
            KeyOrdering::Unorderable
        }
    }
}

impl CatalogTable for Table {
    type Column = Column;

    fn parts(&self) -> TableParts<'_, Column> {
        TableParts::new(&self.table, &self.columns, &self.key)
    }

    /// CDC not enabled, unsupported types, and columns the newest capture instance does
    /// not capture, each with the fix.
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.instances.is_empty() {
            warnings.push(format!(
                "CDC is not enabled on {schema}.{table}: EXEC sys.sp_cdc_enable_table @source_schema = N'{schema}', @source_name = N'{table}', @role_name = NULL",
                schema = self.table.namespace,
                table = self.table.stream
            ));
        }
        for c in &self.columns {
            if let SqlType::Unsupported(t) = &c.ty {
                warnings.push(format!(
                    "column {} has type {t}, which the connector cannot render; it is left out of documents",
                    c.name
                ));
            }
        }
        if let Some(ci) = self.newest_instance() {
            let missing: Vec<&str> = self
                .columns
                .iter()
                .filter(|c| !ci.columns.iter().any(|cc| cc.name == c.name))
                .map(|c| c.name.as_str())
                .collect();
            if !missing.is_empty() {
                warnings.push(format!(
                    "capture instance {} does not capture {}: create a new capture instance to capture them",
                    ci.name,
                    missing.join(", ")
                ));
            }
        }
        warnings
    }
}

/// How the catalog spells a type with its length, precision or scale.
pub fn spell_type(name: &str, max_length: i16, precision: u8, scale: u8) -> String {
    let lower = name.to_ascii_lowercase();
    let len = |n: i16| {
        if n == -1 {
            "max".to_string()
        } else {
            n.to_string()
        }
    };
    match lower.as_str() {
        "char" | "varchar" | "binary" | "varbinary" => format!("{lower}({})", len(max_length)),
        "nchar" | "nvarchar" => format!(
            "{lower}({})",
            if max_length == -1 {
                "max".to_string()
            } else {
                (max_length / 2).to_string()
            }
        ),
        "decimal" | "numeric" => format!("{lower}({precision},{scale})"),
        "time" | "datetime2" | "datetimeoffset" => format!("{lower}({scale})"),
        _ => lower,
    }
}

const COLUMNS: &str = "SELECT s.name, t.name, c.name, \
       CASE WHEN ut.is_user_defined = 0 THEN ut.name ELSE TYPE_NAME(c.system_type_id) END, \
       CAST(c.max_length AS int), CAST(c.precision AS int), CAST(c.scale AS int), \
       CAST(c.is_nullable AS int), c.collation_name, c.column_id, CAST(t.is_tracked_by_cdc AS int) \
  FROM sys.tables t \
  JOIN sys.schemas s ON s.schema_id = t.schema_id \
  JOIN sys.columns c ON c.object_id = t.object_id \
  JOIN sys.types ut ON ut.user_type_id = c.user_type_id \
 WHERE t.is_ms_shipped = 0 AND s.name <> 'cdc' AND c.is_computed = 0 \
 ORDER BY s.name, t.name, c.column_id";

const KEYS: &str = "SELECT s.name, t.name, i.index_id, c.name, CAST(c.is_nullable AS int) \
  FROM sys.indexes i \
  JOIN sys.tables t ON t.object_id = i.object_id \
  JOIN sys.schemas s ON s.schema_id = t.schema_id \
  JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id AND ic.key_ordinal > 0 \
  JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
 WHERE t.is_ms_shipped = 0 AND (i.is_primary_key = 1 OR i.is_unique = 1) AND i.has_filter = 0 \
 ORDER BY s.name, t.name, i.is_primary_key DESC, i.index_id, ic.key_ordinal";

const INSTANCES: &str = "SELECT s.name, t.name, ct.capture_instance, ct.start_lsn, \
       sys.fn_cdc_get_min_lsn(ct.capture_instance), ct.role_name, \
       CAST(CASE WHEN EXISTS (SELECT 1 FROM sys.columns x WHERE x.object_id = ct.object_id AND x.name = '__$command_id') THEN 1 ELSE 0 END AS int), \
       ct.object_id \
  FROM cdc.change_tables ct \
  JOIN sys.tables t ON t.object_id = ct.source_object_id \
  JOIN sys.schemas s ON s.schema_id = t.schema_id \
 ORDER BY ct.create_date";

const CAPTURED: &str = "SELECT cc.object_id, cc.column_name, cc.column_ordinal, \
       CASE WHEN ut.is_user_defined = 0 THEN ut.name ELSE TYPE_NAME(c.system_type_id) END, \
       CAST(c.max_length AS int), CAST(c.precision AS int), CAST(c.scale AS int), c.collation_name \
  FROM cdc.captured_columns cc \
  JOIN sys.columns c ON c.object_id = cc.object_id AND c.name = cc.column_name \
  JOIN sys.types ut ON ut.user_type_id = c.user_type_id \
 ORDER BY cc.object_id, cc.column_ordinal";

/// Where a catalog query puts a column's facts.
struct ColumnAt {
    name: usize,
    type_base: usize,
    max_length: usize,
    precision: usize,
    scale: usize,
    collation: usize,
    ordinal: usize,
}

fn column_from(r: &tiberius::Row, at: &ColumnAt, nullable: bool) -> Column {
    let type_base = column_string(r, at.type_base).unwrap_or_default();
    let max_length = i16::try_from(column_i64(r, at.max_length).unwrap_or(0)).unwrap_or(-1);
    let precision = u8::try_from(column_i64(r, at.precision).unwrap_or(0)).unwrap_or(0);
    let scale = u8::try_from(column_i64(r, at.scale).unwrap_or(0)).unwrap_or(0);
    let collation = column_string(r, at.collation);
    Column {
        name: column_string(r, at.name).unwrap_or_default(),
        type_name: spell_type(&type_base, max_length, precision, scale),
        nullable,
        ty: SqlType::from_catalog(&type_base, scale, collation.as_deref()),
        max_length,
        ordinal: i32::try_from(column_i64(r, at.ordinal).unwrap_or(0)).unwrap_or(0),
    }
}

/// Whether CDC is enabled on the connected database.
pub async fn cdc_enabled(client: &mut Client) -> Result<bool, SourceError> {
    let rows = query_rows(
        client,
        "SELECT CAST(is_cdc_enabled AS int) FROM sys.databases WHERE database_id = DB_ID()",
        Vec::new(),
        "reading sys.databases",
    )
    .await?;
    Ok(rows.first().and_then(|r| column_i64(r, 0)) == Some(1))
}

/// Reads every user table; `watermarks` (schema, table) is left out.
pub async fn load(
    client: &mut Client,
    watermarks: &(String, String),
) -> Result<Vec<Table>, SourceError> {
    let cols = query_rows(client, COLUMNS, Vec::new(), "reading sys.columns").await?;
    let keys = query_rows(client, KEYS, Vec::new(), "reading sys.indexes").await?;
    let mut tables: Vec<Table> = Vec::new();
    for r in &cols {
        let schema = column_string(r, 0).unwrap_or_default();
        let name = column_string(r, 1).unwrap_or_default();
        if (schema.as_str(), name.as_str()) == (watermarks.0.as_str(), watermarks.1.as_str()) {
            continue;
        }
        let column = column_from(
            r,
            &ColumnAt {
                name: 2,
                type_base: 3,
                max_length: 4,
                precision: 5,
                scale: 6,
                collation: 8,
                ordinal: 9,
            },
            column_i64(r, 7) == Some(1),
        );
        match tables.last_mut() {
            Some(t) if t.table.namespace == schema && t.table.stream == name => {
                t.columns.push(column);
            }
            _ => tables.push(Table {
                table: TableRef {
                    namespace: schema,
                    stream: name,
                },
                columns: vec![column],
                key: Vec::new(),
                instances: Vec::new(),
            }),
        }
    }
    // Key: the first index in (primary first, then index id) whose columns are all NOT NULL.
    let mut current: Option<(String, String, i64, Vec<String>, bool)> = None;
    let mut candidates: Vec<(String, String, Vec<String>)> = Vec::new();
    for r in &keys {
        let schema = column_string(r, 0).unwrap_or_default();
        let table = column_string(r, 1).unwrap_or_default();
        let index = column_i64(r, 2).unwrap_or(0);
        let col = column_string(r, 3).unwrap_or_default();
        let nullable = column_i64(r, 4) == Some(1);
        match &mut current {
            Some((s, t, i, cols, ok)) if *s == schema && *t == table && *i == index => {
                cols.push(col);
                *ok &= !nullable;
            }
            _ => {
                if let Some((s, t, _, cols, true)) = current.take() {
                    candidates.push((s, t, cols));
                }
                current = Some((schema, table, index, vec![col], !nullable));
            }
        }
    }
    if let Some((s, t, _, cols, true)) = current.take() {
        candidates.push((s, t, cols));
    }
    for t in &mut tables {
        if let Some((_, _, cols)) = candidates
            .iter()
            .find(|(s, n, _)| *s == t.table.namespace && *n == t.table.stream)
        {
            t.key.clone_from(cols);
        }
    }
    if cdc_enabled(client).await? {
        load_instances(client, &mut tables).await?;
    }
    Ok(tables)
}

async fn load_instances(client: &mut Client, tables: &mut [Table]) -> Result<(), SourceError> {
    let instances = query_rows(client, INSTANCES, Vec::new(), "reading cdc.change_tables").await?;
    let captured = query_rows(client, CAPTURED, Vec::new(), "reading cdc.captured_columns").await?;
    for r in &instances {
        let schema = column_string(r, 0).unwrap_or_default();
        let name = column_string(r, 1).unwrap_or_default();
        let object_id = column_i64(r, 7).unwrap_or(0);
        let columns = captured
            .iter()
            .filter(|c| column_i64(c, 0) == Some(object_id))
            .map(|c| {
                column_from(
                    c,
                    &ColumnAt {
                        name: 1,
                        type_base: 3,
                        max_length: 4,
                        precision: 5,
                        scale: 6,
                        collation: 7,
                        ordinal: 2,
                    },
                    true,
                )
            })
            .collect();
        let start_lsn = column_lsn(r, 3).unwrap_or_default();
        let ci = CaptureInstance {
            name: column_string(r, 2).unwrap_or_default(),
            start_lsn,
            min_lsn: column_lsn(r, 4).unwrap_or(start_lsn),
            columns,
            has_command_id: column_i64(r, 6) == Some(1),
            role: column_string(r, 5),
        };
        if let Some(t) = tables
            .iter_mut()
            .find(|t| t.table.namespace == schema && t.table.stream == name)
        {
            t.instances.push(ci);
        }
    }
    Ok(())
}

/// The columns of `columns` the connector can render (unsupported types are left out).
pub fn readable(columns: &[Column]) -> Vec<Column> {
    columns
        .iter()
        .filter(|c| !matches!(c.ty, SqlType::Unsupported(_)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().expect("lsn")
    }

    fn instance(name: &str, start: &str, min: &str, cols: &[&str]) -> CaptureInstance {
        CaptureInstance {
            name: name.into(),
            min_lsn: lsn(min),
            start_lsn: lsn(start),
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, c)| Column {
                    name: (*c).into(),
                    type_name: "int".into(),
                    nullable: true,
                    ty: SqlType::Int,
                    max_length: 4,
                    ordinal: i32::try_from(i + 1).unwrap_or(0),
                })
                .collect(),
            has_command_id: true,
            role: None,
        }
    }

    fn table(instances: Vec<CaptureInstance>) -> Table {
        let col = |n: &str| Column {
            name: n.into(),
            type_name: "int".into(),
            nullable: false,
            ty: SqlType::Int,
            max_length: 4,
            ordinal: 1,
        };
        Table {
            table: TableRef {
                namespace: "dbo".into(),
                stream: "t".into(),
            },
            columns: vec![col("id"), col("a"), col("b")],
            key: vec!["id".into()],
            instances,
        }
    }

    #[test]
    fn the_newest_covering_instance_is_read_and_a_newer_one_takes_over_at_its_start() {
        let old = instance(
            "dbo_t",
            "00000010:00000000:0001",
            "00000010:00000000:0001",
            &["id", "a"],
        );
        let new = instance(
            "dbo_t_v2",
            "00000020:00000000:0001",
            "00000020:00000000:0001",
            &["id", "a", "b"],
        );
        let t = table(vec![old.clone(), new.clone()]);
        // Before the new one starts, only the old one covers.
        let p = lsn("00000015:00000000:0000");
        assert_eq!(t.instance_for(p).map(|c| c.name.as_str()), Some("dbo_t"));
        assert_eq!(
            t.next_instance(&old).map(|c| c.name.as_str()),
            Some("dbo_t_v2")
        );
        // Exactly one LSN before the new start: the new one covers everything after it.
        let edge = lsn("00000020:00000000:0000");
        assert_eq!(
            t.instance_for(edge).map(|c| c.name.as_str()),
            Some("dbo_t_v2")
        );
        assert_eq!(t.next_instance(&new), None);
        // Backfills read what the newest instance captures.
        let names: Vec<String> = t.captured_columns().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["id", "a", "b"]);
        // Old instance dropped and the new one cleaned up past the position: nothing covers.
        let cleaned = instance(
            "dbo_t_v2",
            "00000020:00000000:0001",
            "00000030:00000000:0001",
            &["id"],
        );
        let t2 = table(vec![cleaned]);
        assert!(t2.instance_for(p).is_none());
        // A table first tracked after the position: its (uncleaned) instance is read.
        let later = table(vec![new]);
        assert_eq!(
            later.instance_for(p).map(|c| c.name.as_str()),
            Some("dbo_t_v2")
        );
    }

    #[test]
    fn discovery_names_the_fixes() {
        let info = table(Vec::new()).info();
        assert!(
            info.warnings[0]
                .contains("sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N't'"),
            "{:?}",
            info.warnings
        );
        let partial = table(vec![instance(
            "dbo_t",
            "00000010:00000000:0001",
            "00000010:00000000:0001",
            &["id"],
        )])
        .info();
        assert!(
            partial
                .warnings
                .iter()
                .any(|w| w.contains("does not capture a, b")),
            "{:?}",
            partial.warnings
        );
        assert_eq!(partial.facts.key[0].ordering, KeyOrdering::Native);
    }

    #[test]
    fn types_are_spelled_as_the_server_does() {
        assert_eq!(spell_type("nvarchar", 100, 0, 0), "nvarchar(50)");
        assert_eq!(spell_type("varbinary", -1, 0, 0), "varbinary(max)");
        assert_eq!(spell_type("decimal", 9, 10, 2), "decimal(10,2)");
        assert_eq!(spell_type("datetime2", 8, 27, 7), "datetime2(7)");
        assert_eq!(spell_type("INT", 4, 10, 0), "int");
    }
}
