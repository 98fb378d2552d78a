//! What the catalog says: capturable tables (`information_schema`), their columns and how
//! each renders, the usable key (the primary key, else the first unique index on NOT NULL
//! columns), and how each key column orders (drives Automatic).

use backfill_core::SourceError;
use backfill_core::catalog::{CatalogColumn, CatalogTable, TableParts};
use backfill_core::mode::KeyOrdering;
use backfill_core::row::QuotedName;
use backfill_core::source::TableRef;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::conn::my_error;
use crate::value::ColType;

/// A column as the connector uses it.
#[derive(Clone, Debug)]
pub struct Column {
    /// Name.
    pub name: String,
    /// `COLUMN_TYPE` spelling.
    pub column_type: String,
    /// `DATA_TYPE`.
    pub data_type: String,
    /// NULL allowed.
    pub nullable: bool,
    /// Character set, for character columns.
    pub charset: Option<String>,
    /// Collation, for character columns.
    pub collation: Option<String>,
    /// How values render.
    pub ty: ColType,
    /// The name as rows take it, quoted once.
    pub quoted: QuotedName,
}

/// A capturable table.
#[derive(Clone, Debug)]
pub struct Table {
    /// Database and table.
    pub table: TableRef,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// The usable key.
    pub key: Vec<String>,
}

impl CatalogColumn for Column {
    fn name(&self) -> &str {
        &self.name
    }
    /// The `COLUMN_TYPE` spelling, except that MariaDB's JSON (LONGTEXT with a json_valid
    /// check) is named json: its values are JSON documents (DESIGN.md §5).
    fn type_name(&self) -> &str {
        if self.ty == ColType::Json {
            "json"
        } else {
            &self.column_type
        }
    }
    fn nullable(&self) -> bool {
        self.nullable
    }
    fn ordering(&self) -> KeyOrdering {
        key_ordering(&self.ty)
    }
}

impl CatalogTable for Table {
    type Column = Column;

    fn parts(&self) -> TableParts<'_, Column> {
        TableParts::new(&self.table, &self.columns, &self.key)
    }
}

/// Integers compare natively; everything the server can cast back from its JSON form is
/// compared by the server in the column's own collation.
fn key_ordering(ty: &ColType) -> KeyOrdering {
    match ty {
        ColType::Int => KeyOrdering::Native,
        ColType::Decimal { .. }
        | ColType::Date
        | ColType::DateTime { .. }
        | ColType::Timestamp { .. }
        | ColType::Time { .. }
        | ColType::Text { .. }
        | ColType::Binary { .. }
        | ColType::Year
        | ColType::Enum(_)
        | ColType::Address(_) => KeyOrdering::Database,
        _ => KeyOrdering::Unorderable,
    }
}

/// The columns of the first unique index (of `index_columns`: index name and column, in
/// index order, PRIMARY first) whose columns are all NOT NULL; empty when there is none.
fn first_not_null_index<'a>(
    index_columns: impl Iterator<Item = (&'a str, &'a str)>,
    columns: &[Column],
) -> Vec<String> {
    let not_null = |c: &str| columns.iter().any(|col| col.name == c && !col.nullable);
    let mut current: Option<(&str, Vec<String>, bool)> = None;
    for (index, column) in index_columns {
        if let Some((name, key, usable)) = &mut current {
            if *name == index {
                key.push(column.to_string());
                *usable &= not_null(column);
                continue;
            }
            if *usable {
                return std::mem::take(key);
            }
        }
        current = Some((index, vec![column.to_string()], not_null(column)));
    }
    match current {
        Some((_, key, true)) => key,
        _ => Vec::new(),
    }
}

/// Every base table outside the system schemas, with its columns and usable key.
pub async fn load_tables(conn: &mut Conn) -> Result<Vec<Table>, SourceError> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
              WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')
              ORDER BY 1, 2",
        )
        .await
        .map_err(|e| my_error(e, "reading information_schema.TABLES"))?;
    type ColRow = (
        String,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let cols: Vec<ColRow> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, COLLATION_NAME
               FROM information_schema.COLUMNS
              WHERE TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')
              ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        )
        .await
        .map_err(|e| my_error(e, "reading information_schema.COLUMNS"))?;
    let checks: Vec<(String, String, String)> = conn
        .query("SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS")
        .await
        .unwrap_or_default();
    // Unique indexes without a prefix part, PRIMARY first. Nullability is the columns'
    // own (read above), not joined in here: a join would drop a nullable column's row
    // but keep its index's other columns, reading the index as a narrower key that is
    // not unique (and it makes the server open every table twice).
    let keys: Vec<(String, String, String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, COLUMN_NAME
               FROM information_schema.STATISTICS
              WHERE NON_UNIQUE = 0 AND SUB_PART IS NULL
                AND TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')
              ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME <> 'PRIMARY', INDEX_NAME, SEQ_IN_INDEX",
        )
        .await
        .map_err(|e| my_error(e, "reading information_schema.STATISTICS"))?;
    let mut out = Vec::new();
    for (schema, name) in tables {
        let columns: Vec<Column> = cols
            .iter()
            .filter(|c| c.0 == schema && c.1 == name)
            .map(|c| {
                let json_checked = checks.iter().any(|(s, t, clause)| {
                    s == &schema
                        && t == &name
                        && clause.to_ascii_lowercase().replace('`', "")
                            == format!("json_valid({})", c.2.to_ascii_lowercase())
                });
                Column {
                    quoted: QuotedName::new(&c.2),
                    name: c.2.clone(),
                    data_type: c.3.clone(),
                    column_type: c.4.clone(),
                    nullable: c.5 == "YES",
                    charset: c.6.clone(),
                    collation: c.7.clone(),
                    ty: ColType::from_catalog(&c.3, &c.4, c.6.as_deref(), json_checked),
                }
            })
            .collect();
        let index_columns = keys.iter().filter(|k| k.0 == schema && k.1 == name);
        let key = first_not_null_index(
            index_columns.map(|k| (k.2.as_str(), k.3.as_str())),
            &columns,
        );
        out.push(Table {
            table: TableRef {
                namespace: schema,
                stream: name,
            },
            columns,
            key,
        });
    }
    Ok(out)
}
