//! The catalog every source reads: its tables, their columns and usable keys, as one shape.
//!
//! A database crate's `catalog` room reads its server's catalog into its own table and
//! column types (they carry what only that database knows: OIDs, collations, capture
//! instances, replica identities) and implements [`CatalogTable`] and [`CatalogColumn`]
//! for them. Everything the core needs from a catalog is then written once here:
//!
//! - [`CatalogTable::info`]: the table as discovery reports it ([`TableInfo`]), with the
//!   facts Automatic decides on (DESIGN.md §6) and the crate's warnings;
//! - [`find`]: a binding's table, or the one "table not found" error every source gives;
//! - [`compare_keys`]: two keys compared column by column where every key column has a
//!   native order, the scaffolding of every [`KeyClassifier::compare_native`].
//!
//! [`KeyClassifier::compare_native`]: crate::source::KeyClassifier::compare_native

use std::cmp::Ordering;

use serde_json::Value;

use crate::SourceError;
use crate::key::Key;
use crate::mode::{KeyColumnFacts, KeyOrdering, TableFacts};
use crate::source::{BindingSpec, ColumnInfo, Discovery, TableInfo, TableRef};

/// A column of a [`CatalogTable`].
pub trait CatalogColumn {
    /// The column's name.
    fn name(&self) -> &str;
    /// The type as discovery shows it (the server's own spelling).
    fn type_name(&self) -> &str;
    /// Whether NULL is allowed.
    fn nullable(&self) -> bool;
    /// How the column orders as a key column (drives Automatic).
    fn ordering(&self) -> KeyOrdering;
    /// [`ColumnInfo::ordinal`]: none unless the database numbers its columns for good.
    fn ordinal(&self) -> Option<u64> {
        None
    }
    /// [`ColumnInfo::fills_existing_rows`].
    fn fills_existing_rows(&self) -> bool {
        false
    }
}

/// What every catalog knows of a table, borrowed from the crate's own table type.
#[derive(Debug)]
pub struct TableParts<'a, C> {
    /// Namespace and name.
    pub table: &'a TableRef,
    /// Columns in table order.
    pub columns: &'a [C],
    /// The usable key (primary key, else a unique index on non-null columns), in key
    /// order; empty for a keyless table.
    pub key: &'a [String],
}

impl<'a, C> TableParts<'a, C> {
    /// The parts of a table named `table` with `columns` and `key`.
    pub fn new(table: &'a TableRef, columns: &'a [C], key: &'a [String]) -> Self {
        Self {
            table,
            columns,
            key,
        }
    }
}

/// A capturable table as a database crate's catalog reads it.
pub trait CatalogTable {
    /// The crate's column type.
    type Column: CatalogColumn;

    /// The parts every catalog has: name, columns, key.
    fn parts(&self) -> TableParts<'_, Self::Column>;
    /// What discovery should warn about (a missing setting, an unsupported type), each
    /// with the statement or setting that fixes it.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Namespace and name.
    fn table_ref(&self) -> &TableRef {
        self.parts().table
    }
    /// Columns in table order.
    fn columns(&self) -> &[Self::Column] {
        self.parts().columns
    }
    /// The usable key, in key order; empty for a keyless table.
    fn key(&self) -> &[String] {
        self.parts().key
    }

    /// The column called `name`.
    fn column(&self, name: &str) -> Option<&Self::Column> {
        self.columns().iter().find(|c| c.name() == name)
    }

    /// The table as discovery reports it.
    fn info(&self) -> TableInfo {
        TableInfo {
            table: self.table_ref().clone(),
            columns: self
                .columns()
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name().to_string(),
                    type_name: c.type_name().to_string(),
                    nullable: c.nullable(),
                    ordinal: c.ordinal(),
                    fills_existing_rows: c.fills_existing_rows(),
                })
                .collect(),
            facts: TableFacts {
                key: self
                    .key()
                    .iter()
                    .map(|k| {
                        let c = self.column(k);
                        KeyColumnFacts {
                            name: k.clone(),
                            type_name: c.map(|c| c.type_name().to_string()).unwrap_or_default(),
                            ordering: c.map_or(KeyOrdering::Unorderable, CatalogColumn::ordering),
                        }
                    })
                    .collect(),
            },
            warnings: self.warnings(),
        }
    }
}

/// A source's catalog as read at connect. Implementing it makes the source a
/// [`Discovery`] (every table's [`CatalogTable::info`]) and gives it the table lookup and
/// the per-column key comparison its scanner and classifier use.
pub trait Catalog {
    /// The crate's table type.
    type Table: CatalogTable;

    /// The capturable tables, the connector's own helper tables excluded.
    fn tables(&self) -> &[Self::Table];

    /// The table a binding names, or the error that says it is gone ([`find`]).
    fn table(&self, table: &TableRef) -> Result<&Self::Table, SourceError> {
        find(self.tables(), table)
    }

    /// [`compare_keys`] over `binding`'s key columns: `compare(column, x, y)` orders one
    /// column's values natively or says `None`. `None` too when the table is unknown.
    fn compare_by_column(
        &self,
        binding: &BindingSpec,
        a: &Key,
        b: &Key,
        mut compare: impl FnMut(
            &<Self::Table as CatalogTable>::Column,
            &Value,
            &Value,
        ) -> Option<Ordering>,
    ) -> Option<Ordering> {
        let t = self
            .tables()
            .iter()
            .find(|t| t.table_ref() == &binding.table)?;
        compare_keys(binding.key.len(), a, b, |i, x, y| {
            compare(t.column(&binding.key[i])?, x, y)
        })
    }
}

impl<C: Catalog> Discovery for C {
    async fn discover(&mut self) -> Result<Vec<TableInfo>, SourceError> {
        Ok(self.tables().iter().map(CatalogTable::info).collect())
    }
}

/// The table `table` among `tables`, or the error that says it is gone: the source reads
/// its catalog at connect, so a bound table missing from it was dropped or renamed, or
/// the user may no longer read it.
pub fn find<'a, T: CatalogTable>(tables: &'a [T], table: &TableRef) -> Result<&'a T, SourceError> {
    tables
        .iter()
        .find(|t| t.table_ref() == table)
        .ok_or_else(|| {
            SourceError::definite(format!(
                "{table}: table not found; was it dropped or renamed, or may the user no longer read it? (`discover` lists what the connector can read)"
            ))
        })
}

/// Compares keys `a` and `b` of `n` columns, column by column, with `compare`:
/// `compare(i, x, y)` orders column `i`'s values natively, or says `None` when column `i`
/// (or that value) has no native order. The answer is `None` unless every column has one,
/// whatever the values: a comparator that answered for some pairs and not others would
/// classify keys of one binding by two different orders.
pub fn compare_keys(
    n: usize,
    a: &Key,
    b: &Key,
    mut compare: impl FnMut(usize, &Value, &Value) -> Option<Ordering>,
) -> Option<Ordering> {
    let mut result = Ordering::Equal;
    for i in 0..n {
        let order = compare(i, a.0.get(i)?, b.0.get(i)?)?;
        if result == Ordering::Equal {
            result = order;
        }
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Col(&'static str, KeyOrdering);
    impl CatalogColumn for Col {
        fn name(&self) -> &str {
            self.0
        }
        fn type_name(&self) -> &str {
            "int"
        }
        fn nullable(&self) -> bool {
            false
        }
        fn ordering(&self) -> KeyOrdering {
            self.1
        }
    }
    struct Tab(TableRef, Vec<Col>, Vec<String>);
    impl CatalogTable for Tab {
        type Column = Col;
        fn parts(&self) -> TableParts<'_, Col> {
            TableParts::new(&self.0, &self.1, &self.2)
        }
    }

    #[test]
    fn info_reports_key_facts_and_find_names_the_missing_table() {
        let t = Tab(
            TableRef::new("s", "t"),
            vec![
                Col("id", KeyOrdering::Native),
                Col("v", KeyOrdering::Database),
            ],
            vec!["id".into(), "gone".into()],
        );
        let info = t.info();
        assert_eq!(info.columns.len(), 2);
        assert_eq!(info.facts.key[0].ordering, KeyOrdering::Native);
        assert_eq!(
            info.facts.key[1].ordering,
            KeyOrdering::Unorderable,
            "a key column the catalog lacks cannot be ordered"
        );
        let tables = [t];
        assert!(find(&tables, &TableRef::new("s", "t")).is_ok());
        let missing = find(&tables, &TableRef::new("s", "u")).err().unwrap();
        assert!(
            missing.message().starts_with("s.u: table not found"),
            "{missing}"
        );
    }

    #[test]
    fn keys_compare_only_when_every_column_has_a_native_order() {
        let ints = |i: usize, x: &Value, y: &Value| {
            (i == 0).then_some(())?;
            Some(x.as_i64()?.cmp(&y.as_i64()?))
        };
        let (a, b) = (
            Key(vec![json!(1), json!("x")]),
            Key(vec![json!(2), json!("x")]),
        );
        assert_eq!(
            compare_keys(2, &a, &b, ints),
            None,
            "the first column differs, but the second has no native order"
        );
        assert_eq!(compare_keys(1, &a, &b, ints), Some(Ordering::Less));
        let all = |_: usize, x: &Value, y: &Value| Some(x.to_string().cmp(&y.to_string()));
        assert_eq!(compare_keys(2, &b, &a, all), Some(Ordering::Greater));
    }
}
