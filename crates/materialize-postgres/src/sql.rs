//! Every statement the destination runs, built from a table's shape, unit-tested per shape.
//!
//! Batches are loaded by binary `COPY` into the session's temporary table `cdc_stage`
//! (`d jsonb, line bigint, op text, pos jsonb, ts bigint`), then applied with one statement
//! per kind of operation: a keyed standard table takes a `DELETE ... USING`, an `UPDATE`
//! that keeps each column the document lacks (`CASE WHEN s.d ? 'c' ... ELSE t.c`), and an
//! `INSERT` of the keys not there; a delta table one `INSERT`.

use crate::types::{Conversion, Mapped};

/// `"name"`, quoted as an identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The longest name PostgreSQL keeps, in bytes (`NAMEDATALEN - 1`); the server cuts a
/// longer one without a word.
pub const MAX_NAME: usize = 63;

/// `base` followed by `suffix`, as a name PostgreSQL keeps whole. When it would pass
/// [`MAX_NAME`], `base` is cut at a character boundary and followed by `_` and eight hex
/// digits of its CRC-32 before `suffix`: two names that share their first 63 bytes stay
/// apart, and one name always fits the same way, so a restart finds the column it made.
/// Left to the server, the cut made two such columns one ("specified more than once"),
/// made a cut column look missing at every later start, and made a 63-byte table's key
/// constraint (`<table>_pkey`) the table's own name.
pub fn fitted(base: &str, suffix: &str) -> String {
    if base.len() + suffix.len() <= MAX_NAME {
        return format!("{base}{suffix}");
    }
    let mut cut = MAX_NAME - suffix.len() - 9;
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}_{:08x}{suffix}",
        &base[..cut],
        crc32fast::hash(base.as_bytes())
    )
}

/// `'text'`, quoted as a literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The columns delta tables add after the collection's.
pub const DELTA_COLUMNS: [(&str, &str); 4] = [
    ("_line", "bigint"),
    ("_op", "text"),
    ("_position", "jsonb"),
    ("_committed_at", "timestamptz"),
];

/// A destination column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// The collection field it holds (the source column's name).
    pub field: String,
    /// Its name: the field's, [`fitted`] into a PostgreSQL name.
    pub name: String,
    /// Its type and conversion.
    pub mapped: Mapped,
}

impl Column {
    /// The column holding `field`, under the field's [`fitted`] name.
    pub fn new(field: &str, mapped: Mapped) -> Self {
        Self {
            field: field.into(),
            name: fitted(field, ""),
            mapped,
        }
    }
}

/// A destination table's shape: everything its statements depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Schema.
    pub schema: String,
    /// Table name, unqualified.
    pub name: String,
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Key column names, as [`Column::name`] (empty: keyless, or delta).
    pub key: Vec<String>,
    /// A delta table.
    pub delta: bool,
    /// A delta table's collection key, as [`Column::name`], when re-read rows equal to
    /// their key's latest row are left out (empty otherwise).
    pub reread_key: Vec<String>,
}

impl Shape {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// The name of the primary key constraint, quoted.
    pub fn pkey(&self) -> String {
        ident(&fitted(&self.name, "_pkey"))
    }

    /// The value of `column` read from the staged document `d` (a `jsonb` expression).
    fn value(&self, column: &Column, d: &str) -> String {
        let (field, ty) = (literal(&column.field), &column.mapped.pg_type);
        match column.mapped.conversion {
            Conversion::Text => format!("({d}->>{field})::{ty}"),
            // `types::zero_in_date`, in SQL.
            Conversion::MysqlDate => format!(
                "CASE WHEN {d}->>{field} ~ '^[0-9]{{4}}-(00-|[0-9]{{2}}-00)' THEN NULL ELSE ({d}->>{field})::{ty} END"
            ),
            Conversion::Json => format!("nullif({d}->{field}, 'null'::jsonb)::{ty}"),
            Conversion::Base64 => format!("decode({d}->>{field}, 'base64')"),
            Conversion::Record => format!(
                "(jsonb_populate_record(NULL::{}, jsonb_build_object({}, {d}->{field}))).{}",
                self.qualified(),
                literal(&column.name),
                ident(&column.name)
            ),
        }
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn values(&self, d: &str) -> String {
        self.columns
            .iter()
            .map(|c| self.value(c, d))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_match(&self) -> String {
        self.key
            .iter()
            .filter_map(|k| self.columns.iter().find(|c| &c.name == k))
            .map(|c| format!("t.{} = {}", ident(&c.name), self.value(c, "s.d")))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `CREATE TABLE` of this shape (key columns NOT NULL and the primary key on a keyed
    /// standard table; every column nullable otherwise).
    pub fn create(&self) -> String {
        let mut defs: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let not_null = if self.key.contains(&c.name) {
                    " NOT NULL"
                } else {
                    ""
                };
                format!("{} {}{not_null}", ident(&c.name), c.mapped.pg_type)
            })
            .collect();
        if self.delta {
            defs.extend(
                DELTA_COLUMNS
                    .iter()
                    .map(|(n, t)| format!("{} {t}", ident(n))),
            );
        } else if !self.key.is_empty() {
            let key: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
            defs.push(format!(
                "CONSTRAINT {} PRIMARY KEY ({})",
                self.pkey(),
                key.join(", ")
            ));
        }
        format!("CREATE TABLE {} ({})", self.qualified(), defs.join(", "))
    }

    /// [`Shape::create`] for a preparer that may run beside another (a restarted
    /// materializer, `cdc status`): `IF NOT EXISTS`, behind a transaction-level advisory
    /// lock on the table's name, for the reason [`create_checkpoints`] gives. Run as one
    /// multi-statement query, so the lock holds until the creation commits.
    pub fn create_once(&self) -> String {
        format!(
            "SELECT pg_advisory_xact_lock(hashtext('cdc_table'), hashtext({})); {}",
            literal(&self.qualified()),
            self.create()
                .replacen("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1)
        )
    }

    /// `ALTER TABLE ... ADD COLUMN` for a column the collection gained.
    pub fn add_column(&self, column: &Column) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN {} {}",
            self.qualified(),
            ident(&column.name),
            column.mapped.pg_type
        )
    }

    /// `ALTER TABLE ... ALTER COLUMN ... TYPE` to a type that holds every value it has.
    pub fn widen_column(&self, column: &Column, to: &str) -> String {
        format!(
            "ALTER TABLE {} ALTER COLUMN {} TYPE {to}",
            self.qualified(),
            ident(&column.name)
        )
    }

    /// A temporary table with a column of each of this shape's types, to read back how
    /// the server spells them ([`TYPE_PROBE_COLUMNS`]); made in a transaction that is
    /// rolled back.
    pub fn type_probe(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("c{i} {}", c.mapped.pg_type))
            .collect();
        format!(
            "CREATE TEMP TABLE cdc_type_probe ({}) ON COMMIT DROP",
            columns.join(", ")
        )
    }

    /// Deletes the staged keys.
    pub fn delete_keys(&self) -> String {
        format!(
            "DELETE FROM {} t USING cdc_stage s WHERE {}",
            self.qualified(),
            self.key_match()
        )
    }

    /// Updates the stored rows of staged keys, keeping each column a document lacks; `None`
    /// when every column is in the key.
    pub fn update(&self) -> Option<String> {
        let sets: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(&c.name))
            .map(|c| {
                let name = ident(&c.name);
                format!(
                    "{name} = CASE WHEN s.d ? {} THEN {} ELSE t.{name} END",
                    literal(&c.field),
                    self.value(c, "s.d")
                )
            })
            .collect();
        (!sets.is_empty()).then(|| {
            format!(
                "UPDATE {} t SET {} FROM cdc_stage s WHERE {}",
                self.qualified(),
                sets.join(", "),
                self.key_match()
            )
        })
    }

    /// Inserts the staged documents whose key is not stored (all of them when keyless).
    pub fn insert(&self) -> String {
        let absent = if self.key.is_empty() {
            String::new()
        } else {
            format!(
                " WHERE NOT EXISTS (SELECT 1 FROM {} t WHERE {})",
                self.qualified(),
                self.key_match()
            )
        };
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM cdc_stage s{absent}",
            self.qualified(),
            self.column_list(),
            self.values("s.d")
        )
    }

    /// Whether the stored row `alias` equals the document `s.d`, every column compared as
    /// text, so types without equality (json, point) compare too.
    fn row_equals_document(&self, alias: &str) -> String {
        let stored: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{alias}.{}::text", ident(&c.name)))
            .collect();
        let wanted: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("({})::text", self.value(c, "s.d")))
            .collect();
        format!(
            "ROW({}) IS NOT DISTINCT FROM ROW({})",
            stored.join(", "),
            wanted.join(", ")
        )
    }

    /// Removes one row equal to the document `$1` (a multiset's delete).
    pub fn remove_one(&self) -> String {
        format!(
            "DELETE FROM {q} WHERE ctid = (SELECT t.ctid FROM {q} t, (SELECT $1::text::jsonb AS d) s WHERE {} LIMIT 1)",
            self.row_equals_document("t"),
            q = self.qualified()
        )
    }

    /// Appends the staged documents as delta rows. With a `reread_key`, a re-read row (a
    /// `c` without a source position) is left out when its key's latest row is not a
    /// delete and equals it, and no earlier staged row of the key comes between.
    pub fn append(&self) -> String {
        let skip = if self.reread_key.is_empty() {
            String::new()
        } else {
            let key_cols: Vec<&Column> = self
                .reread_key
                .iter()
                .filter_map(|k| self.columns.iter().find(|c| &c.name == k))
                .collect();
            let on = |alias: &str| {
                key_cols
                    .iter()
                    .map(|c| format!("{alias}.{} = {}", ident(&c.name), self.value(c, "s.d")))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            let staged_key = key_cols
                .iter()
                .map(|c| format!("{} = {}", self.value(c, "p.d"), self.value(c, "s.d")))
                .collect::<Vec<_>>()
                .join(" AND ");
            format!(
                " WHERE NOT (s.op = 'c' AND s.pos IS NULL AND NOT EXISTS (SELECT 1 FROM cdc_stage p WHERE p.line < s.line AND {staged_key}) AND EXISTS (SELECT 1 FROM (SELECT * FROM {q} l WHERE {on_l} ORDER BY l.\"_line\" DESC LIMIT 1) l WHERE l.\"_op\" <> 'd' AND {}))",
                self.row_equals_document("l"),
                q = self.qualified(),
                on_l = on("l"),
            )
        };
        format!(
            "INSERT INTO {} ({}, \"_line\", \"_op\", \"_position\", \"_committed_at\") SELECT {}, s.line, s.op, s.pos, to_timestamp(s.ts / 1000.0) FROM cdc_stage s{skip}",
            self.qualified(),
            self.column_list(),
            self.values("s.d")
        )
    }

    /// The index a delta table with `reread_key` needs to find a key's latest row.
    pub fn reread_index(&self) -> Option<String> {
        (!self.reread_key.is_empty()).then(|| {
            let mut cols: Vec<String> = self.reread_key.iter().map(|k| ident(k)).collect();
            cols.push("\"_line\"".into());
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
                ident(&fitted(&self.name, "_latest")),
                self.qualified(),
                cols.join(", ")
            )
        })
    }

    /// Recreates the session's typed staging table with this table's columns and types
    /// (the fast path for whole rows: see [`crate::typed`]).
    pub fn create_typed_stage(&self) -> String {
        format!(
            "DROP TABLE IF EXISTS pg_temp.cdc_typed_stage; CREATE TEMP TABLE cdc_typed_stage AS SELECT {} FROM {} WITH NO DATA",
            self.column_list(),
            self.qualified()
        )
    }

    /// Loads whole rows straight into the table (COPY text or binary format).
    pub fn copy_into_table(&self, format: CopyFormat) -> String {
        format!(
            "COPY {} ({}) FROM STDIN{}",
            self.qualified(),
            self.column_list(),
            format.option()
        )
    }

    /// Loads the typed staging table (columns in table order).
    pub fn copy_typed_stage(&self, format: CopyFormat) -> String {
        format!(
            "COPY cdc_typed_stage ({}) FROM STDIN{}",
            self.column_list(),
            format.option()
        )
    }

    /// Upserts the typed staging table's whole rows: each replaces its key's stored row.
    pub fn upsert_typed(&self) -> String {
        let rest: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(&c.name))
            .map(|c| ident(&c.name))
            .collect();
        let key: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
        let action = match rest.len() {
            0 => "NOTHING".to_string(),
            1 => format!("UPDATE SET {0} = EXCLUDED.{0}", rest[0]),
            _ => format!(
                "UPDATE SET ({}) = ROW({})",
                rest.join(", "),
                rest.iter()
                    .map(|c| format!("EXCLUDED.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM cdc_typed_stage ON CONFLICT ({}) DO {action}",
            self.qualified(),
            key.join(", "),
            cols = self.column_list(),
        )
    }

    /// Empties the table.
    pub fn truncate(&self) -> String {
        format!("TRUNCATE {}", self.qualified())
    }
}

/// The session's staging table.
/// The format of a typed `COPY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Binary,
}

impl CopyFormat {
    fn option(self) -> &'static str {
        match self {
            CopyFormat::Text => "",
            CopyFormat::Binary => " (FORMAT binary)",
        }
    }
}

pub const CREATE_STAGE: &str = "CREATE TEMP TABLE IF NOT EXISTS cdc_stage (d jsonb, line bigint, op text, pos jsonb, ts bigint)";
/// Loads the staging table.
pub const COPY_STAGE: &str = "COPY cdc_stage (d, line, op, pos, ts) FROM STDIN (FORMAT binary)";
/// Empties the staging table.
pub const CLEAR_STAGE: &str = "TRUNCATE cdc_stage";

/// The checkpoint table of `schema`: each materialization binding's read position.
///
/// Every process that opens the destination runs this (`cdc run`, and `cdc status` beside
/// it), and two `CREATE TABLE IF NOT EXISTS` of one table at once can both pass the check
/// and the second fail on the catalog's unique index (SQLSTATE 23505). So the statement
/// runs after a transaction-level advisory lock on the schema's checkpoint table, in the
/// one implicit transaction of a multi-statement query: the second waits, then finds the
/// table.
pub fn create_checkpoints(schema: &str) -> String {
    format!(
        "SELECT pg_advisory_xact_lock(hashtext('cdc_checkpoints'), hashtext({0})); \
         CREATE TABLE IF NOT EXISTS {1}.cdc_checkpoints (materialization text NOT NULL, target text NOT NULL, line bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (materialization, target))",
        literal(schema),
        ident(schema)
    )
}

/// The checkpoint table's name when it exists, null when it does not (asked without
/// creating it).
pub fn checkpoints_exist(schema: &str) -> String {
    format!(
        "SELECT to_regclass({})::text",
        literal(&format!("{}.cdc_checkpoints", ident(schema)))
    )
}

/// Reads a materialization's positions: `$1` the materialization.
pub fn read_checkpoints(schema: &str) -> String {
    format!(
        "SELECT target, line FROM {}.cdc_checkpoints WHERE materialization = $1",
        ident(schema)
    )
}

/// Deletes a binding's position, returning the line it held: `$1` materialization, `$2`
/// target.
pub fn forget_checkpoint(schema: &str) -> String {
    format!(
        "DELETE FROM {}.cdc_checkpoints WHERE materialization = $1 AND target = $2 RETURNING line",
        ident(schema)
    )
}

/// Sets a binding's position: `$1` materialization, `$2` target, `$3` line.
pub fn write_checkpoint(schema: &str) -> String {
    format!(
        "INSERT INTO {}.cdc_checkpoints (materialization, target, line) VALUES ($1, $2, $3) ON CONFLICT (materialization, target) DO UPDATE SET line = EXCLUDED.line, updated_at = now()",
        ident(schema)
    )
}

/// A table's columns and their types with modifiers: `$1` the qualified table name.
pub const TABLE_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// The types of [`Shape::type_probe`]'s table, in column order, as `format_type` spells
/// them.
pub const TYPE_PROBE_COLUMNS: &str = "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = 'pg_temp.cdc_type_probe'::regclass AND a.attnum > 0 ORDER BY a.attnum";

/// A table's primary key columns in order: `$1` the qualified table name.
pub const TABLE_KEY: &str = "SELECT a.attname::text FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n), pg_attribute a WHERE i.indrelid = to_regclass($1) AND i.indisprimary AND a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n";

/// A type's base name as `format_type` writes it, or NULL when the type does not exist:
/// `$1` the type as written.
pub const TYPE_NAME: &str = "SELECT format_type(to_regtype($1), NULL)";

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(key: &[&str], delta: bool) -> Shape {
        let col = |name: &str, ty: &str, conversion| {
            Column::new(
                name,
                Mapped {
                    pg_type: ty.into(),
                    conversion,
                    warning: None,
                },
            )
        };
        Shape {
            schema: "public".into(),
            name: "or\"ders".into(),
            columns: vec![
                col("id", "bigint", Conversion::Text),
                col("it's", "jsonb", Conversion::Json),
                col("raw", "bytea", Conversion::Base64),
                col("tags", "text[]", Conversion::Record),
            ],
            key: key.iter().map(|k| k.to_string()).collect(),
            delta,
            reread_key: Vec::new(),
        }
    }

    #[test]
    fn names_are_fitted_into_63_bytes_apart_and_the_same_each_time() {
        assert_eq!(fitted("orders", "_pkey"), "orders_pkey");
        let exact = "t".repeat(63);
        assert_eq!(fitted(&exact, ""), exact);
        assert_eq!(fitted(&exact, "_pkey").len(), 63);
        assert_ne!(fitted(&exact, "_pkey"), exact);
        let (a1, a2) = (
            format!("{}1", "a".repeat(63)),
            format!("{}2", "a".repeat(63)),
        );
        assert_ne!(fitted(&a1, ""), fitted(&a2, ""));
        assert_eq!(fitted(&a1, ""), fitted(&a1, ""));
        let cjk = "数据".repeat(11);
        let fit = fitted(&cjk, "_cdc_shadow");
        assert!(fit.len() <= 63 && fit.ends_with("_cdc_shadow"), "{fit}");
        assert!(fit.starts_with(&"数据".repeat(6)), "{fit}");
    }

    #[test]
    fn names_and_values_are_quoted_and_converted() {
        let s = shape(&["id"], false);
        assert_eq!(
            s.create(),
            r#"CREATE TABLE "public"."or""ders" ("id" bigint NOT NULL, "it's" jsonb, "raw" bytea, "tags" text[], CONSTRAINT "or""ders_pkey" PRIMARY KEY ("id"))"#
        );
        assert_eq!(
            s.delete_keys(),
            r#"DELETE FROM "public"."or""ders" t USING cdc_stage s WHERE t."id" = (s.d->>'id')::bigint"#
        );
        let update = s.update().unwrap();
        assert!(update.contains(r#""it's" = CASE WHEN s.d ? 'it''s' THEN nullif(s.d->'it''s', 'null'::jsonb)::jsonb ELSE t."it's" END"#), "{update}");
        assert!(update.contains("decode(s.d->>'raw', 'base64')"), "{update}");
        assert!(update.contains(r#"(jsonb_populate_record(NULL::"public"."or""ders", jsonb_build_object('tags', s.d->'tags')))."tags""#), "{update}");
        assert!(s.insert().ends_with(r#"WHERE NOT EXISTS (SELECT 1 FROM "public"."or""ders" t WHERE t."id" = (s.d->>'id')::bigint)"#));
    }

    #[test]
    fn keyless_and_delta_tables_have_no_key() {
        let keyless = shape(&[], false);
        assert!(!keyless.create().contains("PRIMARY KEY"));
        assert!(
            keyless
                .create_once()
                .starts_with("SELECT pg_advisory_xact_lock(")
                && keyless
                    .create_once()
                    .contains("; CREATE TABLE IF NOT EXISTS "),
            "{}",
            keyless.create_once()
        );
        assert!(!keyless.insert().contains("NOT EXISTS"));
        assert!(
            keyless.remove_one().contains("IS NOT DISTINCT FROM")
                && keyless.remove_one().contains("LIMIT 1")
        );
        let delta = shape(&[], true);
        assert!(delta.create().ends_with(
            r#""_line" bigint, "_op" text, "_position" jsonb, "_committed_at" timestamptz)"#
        ));
        assert!(delta.append().contains("to_timestamp(s.ts / 1000.0)"));
        let only_key = Shape {
            columns: shape(&[], false).columns[..1].to_vec(),
            ..shape(&["id"], false)
        };
        assert_eq!(only_key.update(), None);
    }
}
