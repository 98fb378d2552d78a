//! Query text: every statement the connector sends, built from catalog facts, with
//! identifiers quoted and values always passed as parameters (`@P1`, `@P2`, …).
//!
//! Kept apart from the code that runs it so each shape (keyed, composite, keyless, the
//! change reads with and without `__$command_id`) is unit-tested without a server.

use backfill_core::encode::base64_decode;
use backfill_core::{Failure, SourceError};
use serde_json::Value;
use tiberius::ColumnData;

use crate::catalog::Column;
use crate::value::SqlType;

/// Quotes an identifier: `[name]`, with `]` doubled.
pub fn quote(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `[schema].[table]`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

/// `lhs > rhs` for tuples compared left to right (SQL Server has no row-value comparison):
/// `(a > x) OR (a = x AND ((b > y) OR …))`.
pub fn tuple_gt(lhs: &[String], rhs: &[String]) -> String {
    match (lhs, rhs) {
        ([l], [r]) => format!("{l} > {r}"),
        ([l, lrest @ ..], [r, rrest @ ..]) => format!(
            "({l} > {r} OR ({l} = {r} AND ({})))",
            tuple_gt(lrest, rrest)
        ),
        _ => "1 = 0".into(),
    }
}

/// A name safe to splice after `COLLATE` (catalog collation names are letters, digits and
/// underscores; anything else is left out rather than spliced).
fn collation_clause(c: &Column) -> String {
    match &c.ty {
        SqlType::Text {
            collation: Some(coll),
            ..
        } if coll
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_') =>
        {
            format!(" COLLATE {coll}")
        }
        _ => String::new(),
    }
}

/// The expression a key parameter is compared through, so the server compares it exactly
/// as the column: integers, floats, bits and binary go as typed parameters; everything
/// else is sent as text and cast to the column's declared type (and collation).
pub fn key_expr(c: &Column, param: usize) -> String {
    match c.ty {
        SqlType::Int | SqlType::Float | SqlType::Real | SqlType::Bit | SqlType::Binary => {
            format!("@P{param}")
        }
        _ => format!("CAST(@P{param} AS {}){}", c.type_name, collation_clause(c)),
    }
}

/// Select list for `columns` of a table (`alias.` prefix optional).
pub fn select_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| c.ty.select_expr(&quote(&c.name), &quote(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// On a readable secondary: the last log record redone there, in the availability group's
/// decimal LSN form (see `Lsn::from_decimal`), and whether this replica is the primary.
/// No row when the database is in no availability group.
pub const REDONE: &str = "SELECT CAST(last_redone_lsn AS varchar(30)), is_primary_replica \
     FROM sys.dm_hadr_database_replica_states WHERE is_local = 1 AND database_id = DB_ID()";

/// The database's availability-group identity: the same on every replica of it.
pub const GROUP_DATABASE_ID: &str =
    "SELECT CAST(group_database_id AS varchar(36)) FROM sys.databases WHERE database_id = DB_ID()";

/// How a chunk reads its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Locking reads on the primary: `READCOMMITTEDLOCK` makes every read a locking read
    /// even where READ_COMMITTED_SNAPSHOT is on; the fence argument rests on it (see
    /// `scan.rs`).
    Locking,
    /// One statement's snapshot on a readable secondary, which maps every read to snapshot
    /// isolation (see `replica.rs`): no hint.
    Snapshot,
}

impl Reads {
    fn hint(self) -> &'static str {
        match self {
            Reads::Locking => " WITH (READCOMMITTEDLOCK)",
            Reads::Snapshot => "",
        }
    }
}

/// One chunk of a keyed table: rows after the cursor (parameters `@P1..@Pn` in key order
/// when `after` is set), in key order, `limit` rows, read as `reads` says.
pub fn scan_keyed(
    (schema, table): (&str, &str),
    columns: &[Column],
    key: &[Column],
    after: bool,
    limit: usize,
    reads: Reads,
) -> String {
    let mut sql = format!(
        "SELECT TOP ({limit}) {} FROM {}{}",
        select_list(columns),
        qualified(schema, table),
        reads.hint()
    );
    if after {
        let lhs: Vec<String> = key.iter().map(|k| quote(&k.name)).collect();
        let rhs: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, k)| key_expr(k, i + 1))
            .collect();
        sql.push_str(&format!(" WHERE {}", tuple_gt(&lhs, &rhs)));
    }
    let order: Vec<String> = key.iter().map(|k| quote(&k.name)).collect();
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    sql
}

/// The column carrying a keyless row's physical locator.
pub const PHYSLOC: &str = "__physloc";

/// One chunk of a keyless table, in `%%physloc%%` order (file, page, slot as binary(8)).
pub fn scan_physical(
    (schema, table): (&str, &str),
    columns: &[Column],
    after: bool,
    limit: usize,
    reads: Reads,
) -> String {
    format!(
        "SELECT TOP ({limit}) %%physloc%% AS {}, {} FROM {}{}{} ORDER BY %%physloc%%",
        quote(PHYSLOC),
        select_list(columns),
        qualified(schema, table),
        reads.hint(),
        if after {
            " WHERE %%physloc%% > @P1"
        } else {
            ""
        }
    )
}

/// Classifies a batch of keys against a window in one query: for key `i` (parameters
/// `@P{first_key + i*n}`…), whether it is above `lo` (parameters `@P1..`) and above `hi`.
/// Returns one row `(i, above_lo, above_hi)` per key.
pub fn classify(key: &[Column], keys: usize, has_lo: bool, has_hi: bool) -> String {
    let n = key.len();
    let bound = |first: usize| -> Vec<String> {
        key.iter()
            .enumerate()
            .map(|(j, c)| key_expr(c, first + j))
            .collect()
    };
    let lo_first = 1;
    let hi_first = lo_first + if has_lo { n } else { 0 };
    let keys_first = hi_first + if has_hi { n } else { 0 };
    let mut selects = Vec::with_capacity(keys);
    for i in 0..keys {
        let k = bound(keys_first + i * n);
        let above_lo = if has_lo {
            format!(
                "CASE WHEN {} THEN 1 ELSE 0 END",
                tuple_gt(&k, &bound(lo_first))
            )
        } else {
            "1".into()
        };
        let above_hi = if has_hi {
            format!(
                "CASE WHEN {} THEN 1 ELSE 0 END",
                tuple_gt(&k, &bound(hi_first))
            )
        } else {
            "0".into()
        };
        selects.push(format!(
            "SELECT {i} AS i, {above_lo} AS lo, {above_hi} AS hi"
        ));
    }
    format!("{} ORDER BY i", selects.join(" UNION ALL "))
}

/// Columns before the captured ones in a [`changes`] row.
pub const CHANGE_HEAD: usize = 5;

/// How change rows of one capture instance are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeRead {
    /// From the change table, ordered by `__$command_id` (SQL Server 2016 SP2 and later).
    Direct,
    /// From the change table, ordered by `__$seqval` (the connector's own watermark table,
    /// one row per transaction, on any server).
    DirectBySeqval,
    /// Through `cdc.fn_cdc_get_all_changes_<instance>` (servers without `__$command_id`).
    Function,
}

/// Change rows of one capture instance in `(@P1, @P2]` (exclusive, inclusive LSNs), in the
/// order the transactions applied them.
///
/// Where the change table has `__$command_id` the rows are read from it directly and
/// ordered by `(__$start_lsn, __$command_id, __$seqval, __$operation)`: the documentation
/// warns that `__$seqval` alone does not order the operations of one transaction, and two
/// changes of one row in one transaction applied out of order would leave a stale row.
/// Older servers use `cdc.fn_cdc_get_all_changes_<instance>` (from `@P3`, the first LSN it
/// accepts, to `@P2`) ordered by `(__$start_lsn, __$seqval, __$operation)`.
pub fn changes(instance: &str, columns: &[Column], read: ChangeRead) -> String {
    let head = if read == ChangeRead::Direct {
        "[__$start_lsn], [__$seqval], [__$operation], [__$update_mask], CAST([__$command_id] AS int) AS [__$command_id]"
    } else {
        "[__$start_lsn], [__$seqval], [__$operation], [__$update_mask], 0 AS [__$command_id]"
    };
    let cols = select_list(columns);
    let list = if cols.is_empty() {
        head.to_string()
    } else {
        format!("{head}, {cols}")
    };
    let table = quote(&format!("{instance}_CT"));
    match read {
        ChangeRead::Direct => format!(
            "SELECT {list} FROM [cdc].{table} WHERE [__$start_lsn] > @P1 AND [__$start_lsn] <= @P2 \
             ORDER BY [__$start_lsn], [__$command_id], [__$seqval], [__$operation]"
        ),
        ChangeRead::DirectBySeqval => format!(
            "SELECT {list} FROM [cdc].{table} WHERE [__$start_lsn] > @P1 AND [__$start_lsn] <= @P2 \
             ORDER BY [__$start_lsn], [__$seqval], [__$operation]"
        ),
        ChangeRead::Function => format!(
            "SELECT {list} FROM [cdc].{}(@P3, @P2, N'all update old') WHERE [__$start_lsn] > @P1 \
             ORDER BY [__$start_lsn], [__$seqval], [__$operation]",
            quote(&format!("fn_cdc_get_all_changes_{instance}"))
        ),
    }
}

/// The LSN at which one instance's next `cap` change rows after `@P1` (up to `@P2`) end:
/// `(rows, last LSN)`; the stream reads no further than the smallest such LSN in one poll.
pub fn changes_cap(instance: &str, cap: usize) -> String {
    format!(
        "SELECT COUNT_BIG(*), MAX(l) FROM (SELECT TOP ({cap}) [__$start_lsn] AS l FROM [cdc].{} \
         WHERE [__$start_lsn] > @P1 AND [__$start_lsn] <= @P2 ORDER BY [__$start_lsn]) AS t",
        quote(&format!("{instance}_CT"))
    )
}

/// Commit time (ms since the epoch, UTC) and transaction id of each transaction in
/// `(@P1, @P2]`. `tran_end_time` is the server's local time; the session's current UTC
/// offset converts it.
pub const LSN_TIMES: &str = "SELECT start_lsn, \
     DATEDIFF_BIG(millisecond, '19700101', DATEADD(minute, -DATEPART(TZOFFSET, SYSDATETIMEOFFSET()), tran_end_time)), \
     tran_id FROM cdc.lsn_time_mapping WHERE start_lsn > @P1 AND start_lsn <= @P2";

/// Creates the watermark table and enables CDC on it (needs db_owner).
pub fn create_watermarks(schema: &str, table: &str) -> String {
    let q = qualified(schema, table);
    format!(
        "IF OBJECT_ID(N'{lit}') IS NULL BEGIN \
           CREATE TABLE {q} (slot int NOT NULL PRIMARY KEY, watermark nvarchar(100) NOT NULL); \
           EXEC sys.sp_cdc_enable_table @source_schema = N'{s}', @source_name = N'{t}', \
             @role_name = NULL, @capture_instance = N'{ci}'; \
         END",
        lit = q.replace('\'', "''"),
        s = schema.replace('\'', "''"),
        t = table.replace('\'', "''"),
        ci = watermark_instance(schema, table).replace('\'', "''"),
    )
}

/// The capture instance of the watermark table.
pub fn watermark_instance(schema: &str, table: &str) -> String {
    format!("{schema}_{table}")
}

/// Writes watermark `@P1` (slot 1).
pub fn write_watermark(schema: &str, table: &str) -> String {
    let q = qualified(schema, table);
    format!(
        "UPDATE {q} SET watermark = @P1 WHERE slot = 1; \
         IF @@ROWCOUNT = 0 INSERT INTO {q} (slot, watermark) VALUES (1, @P1)"
    )
}

/// The commit LSN of watermark `@P1`, once the capture job has recorded it (no row before).
pub fn find_watermark(schema: &str, table: &str) -> String {
    format!(
        "SELECT TOP (1) [__$start_lsn] FROM [cdc].{} WHERE [__$operation] IN (2, 4) AND watermark = @P1",
        quote(&format!("{}_CT", watermark_instance(schema, table)))
    )
}

/// A key value as the parameter [`key_expr`] expects for its column.
pub fn key_param(c: &Column, v: &Value) -> Result<ColumnData<'static>, SourceError> {
    let bad =
        || Failure::Malformed.error(format!("key column {}: cannot use {v} as a key", c.name));
    Ok(match (&c.ty, v) {
        (SqlType::Int, Value::Number(n)) => ColumnData::I64(Some(n.as_i64().ok_or_else(bad)?)),
        (SqlType::Float | SqlType::Real, Value::Number(n)) => {
            ColumnData::F64(Some(n.as_f64().ok_or_else(bad)?))
        }
        (SqlType::Bit, Value::Bool(b)) => ColumnData::Bit(Some(*b)),
        (SqlType::Binary, Value::String(s)) => {
            ColumnData::Binary(Some(base64_decode(s).ok_or_else(bad)?.into()))
        }
        (_, Value::String(s)) => ColumnData::String(Some(s.clone().into())),
        (_, Value::Number(n)) => ColumnData::String(Some(n.to_string().into())),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_col(ty: SqlType) -> Column {
        Column {
            name: "k".into(),
            type_name: "x".into(),
            nullable: false,
            ty,
            max_length: 8,
            ordinal: 1,
        }
    }

    #[test]
    fn key_values_go_back_as_the_parameters_their_expressions_expect() {
        assert!(matches!(
            key_param(&key_col(SqlType::Int), &serde_json::json!(-7)),
            Ok(ColumnData::I64(Some(-7)))
        ));
        assert!(matches!(
            key_param(&key_col(SqlType::Binary), &serde_json::json!("AAH+/w==")),
            Ok(ColumnData::Binary(Some(b))) if b.as_ref() == [0, 1, 254, 255]
        ));
        assert!(matches!(
            key_param(
                &key_col(SqlType::Decimal { scale: 2 }),
                &serde_json::from_str("1.50").expect("number")
            ),
            Ok(ColumnData::String(Some(s))) if s == "1.50"
        ));
        assert!(matches!(
            key_param(
                &key_col(SqlType::Guid),
                &serde_json::json!("6F9619FF-8B86-D011-B42D-00C04FC964FF")
            ),
            Ok(ColumnData::String(Some(_)))
        ));
        assert!(key_param(&key_col(SqlType::Int), &serde_json::json!(null)).is_err());
        assert!(key_param(&key_col(SqlType::Binary), &serde_json::json!("not base64!")).is_err());
    }

    fn col(name: &str, ty: SqlType, type_name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            nullable: false,
            ty,
            max_length: 4,
            ordinal: 1,
        }
    }

    fn id() -> Column {
        col("id", SqlType::Int, "int")
    }

    fn name_ci() -> Column {
        col(
            "na]me",
            SqlType::Text {
                collation: Some("Latin1_General_CI_AS".into()),
                national: true,
            },
            "nvarchar(50)",
        )
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a]b"), "[a]]b]");
        assert_eq!(qualified("dbo", "my table"), "[dbo].[my table]");
    }

    #[test]
    fn tuple_comparison_expands_left_to_right() {
        let l = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        assert_eq!(tuple_gt(&l(&["a"]), &l(&["x"])), "a > x");
        assert_eq!(
            tuple_gt(&l(&["a", "b", "c"]), &l(&["x", "y", "z"])),
            "(a > x OR (a = x AND ((b > y OR (b = y AND (c > z))))))"
        );
    }

    #[test]
    fn keyed_scans_for_single_and_composite_keys() {
        let cols = vec![
            id(),
            name_ci(),
            col("m", SqlType::Money { small: false }, "money"),
        ];
        assert_eq!(
            scan_keyed(("dbo", "t"), &cols, &[id()], false, 101, Reads::Locking),
            "SELECT TOP (101) [id] AS [id], [na]]me] AS [na]]me], CAST([m] AS decimal(19,4)) AS [m] \
             FROM [dbo].[t] WITH (READCOMMITTEDLOCK) ORDER BY [id]"
        );
        assert_eq!(
            scan_keyed(("dbo", "t"), &cols, &[id()], true, 11, Reads::Locking),
            "SELECT TOP (11) [id] AS [id], [na]]me] AS [na]]me], CAST([m] AS decimal(19,4)) AS [m] \
             FROM [dbo].[t] WITH (READCOMMITTEDLOCK) WHERE [id] > @P1 ORDER BY [id]"
        );
        let sql = scan_keyed(
            ("s", "t"),
            &cols,
            &[name_ci(), id()],
            true,
            5,
            Reads::Locking,
        );
        assert!(
            sql.ends_with(
                "WHERE ([na]]me] > CAST(@P1 AS nvarchar(50)) COLLATE Latin1_General_CI_AS OR \
                 ([na]]me] = CAST(@P1 AS nvarchar(50)) COLLATE Latin1_General_CI_AS AND ([id] > @P2))) \
                 ORDER BY [na]]me], [id]"
            ),
            "{sql}"
        );
    }

    #[test]
    fn a_collation_that_is_not_a_plain_name_is_not_spliced() {
        let evil = col(
            "c",
            SqlType::Text {
                collation: Some("X; DROP TABLE t".into()),
                national: false,
            },
            "varchar(10)",
        );
        assert_eq!(key_expr(&evil, 3), "CAST(@P3 AS varchar(10))");
    }

    #[test]
    fn keyless_scans_order_by_physical_locator() {
        assert_eq!(
            scan_physical(("dbo", "h"), &[id()], true, 3, Reads::Locking),
            "SELECT TOP (3) %%physloc%% AS [__physloc], [id] AS [id] FROM [dbo].[h] \
             WITH (READCOMMITTEDLOCK) WHERE %%physloc%% > @P1 ORDER BY %%physloc%%"
        );
    }

    #[test]
    fn a_secondarys_scans_carry_no_locking_hint() {
        assert_eq!(
            scan_keyed(("dbo", "t"), &[id()], &[id()], true, 11, Reads::Snapshot),
            "SELECT TOP (11) [id] AS [id] FROM [dbo].[t] WHERE [id] > @P1 ORDER BY [id]"
        );
        assert_eq!(
            scan_physical(("dbo", "h"), &[id()], false, 3, Reads::Snapshot),
            "SELECT TOP (3) %%physloc%% AS [__physloc], [id] AS [id] FROM [dbo].[h] ORDER BY %%physloc%%"
        );
    }

    #[test]
    fn classification_numbers_parameters_bounds_first() {
        let sql = classify(&[name_ci()], 2, true, true);
        // lo is @P1, hi @P2, keys @P3 and @P4.
        assert!(sql.contains("SELECT 0 AS i, CASE WHEN CAST(@P3 AS nvarchar(50)) COLLATE Latin1_General_CI_AS > CAST(@P1 AS nvarchar(50)) COLLATE Latin1_General_CI_AS THEN 1 ELSE 0 END AS lo"), "{sql}");
        assert!(
            sql.contains("SELECT 1 AS i, CASE WHEN CAST(@P4 AS nvarchar(50))"),
            "{sql}"
        );
        assert!(sql.contains("> CAST(@P2 AS nvarchar(50))"), "{sql}");
        let open = classify(&[id()], 1, false, false);
        assert_eq!(open, "SELECT 0 AS i, 1 AS lo, 0 AS hi ORDER BY i");
        let only_hi = classify(&[id(), id()], 1, false, true);
        assert!(
            only_hi.contains("(@P3 > @P1 OR (@P3 = @P1 AND (@P4 > @P2)))"),
            "{only_hi}"
        );
    }

    #[test]
    fn change_reads_prefer_command_id_order() {
        let direct = changes("dbo_t", &[id()], ChangeRead::Direct);
        assert_eq!(
            direct,
            "SELECT [__$start_lsn], [__$seqval], [__$operation], [__$update_mask], \
             CAST([__$command_id] AS int) AS [__$command_id], [id] AS [id] \
             FROM [cdc].[dbo_t_CT] WHERE [__$start_lsn] > @P1 AND [__$start_lsn] <= @P2 \
             ORDER BY [__$start_lsn], [__$command_id], [__$seqval], [__$operation]"
        );
        let function = changes("dbo_t", &[id()], ChangeRead::Function);
        assert!(
            function
                .contains("FROM [cdc].[fn_cdc_get_all_changes_dbo_t](@P3, @P2, N'all update old')"),
            "{function}"
        );
        assert!(function.ends_with("ORDER BY [__$start_lsn], [__$seqval], [__$operation]"));
        assert!(changes_cap("dbo_t", 500).contains("TOP (500)"));
        let by_seqval = changes("dbo_wm", &[], ChangeRead::DirectBySeqval);
        assert!(by_seqval.starts_with("SELECT [__$start_lsn], [__$seqval], [__$operation], [__$update_mask], 0 AS [__$command_id] FROM [cdc].[dbo_wm_CT]"), "{by_seqval}");
    }

    #[test]
    fn watermark_statements() {
        let create = create_watermarks("dbo", "w'm");
        assert!(
            create.contains("IF OBJECT_ID(N'[dbo].[w''m]') IS NULL"),
            "{create}"
        );
        assert!(
            create.contains("@capture_instance = N'dbo_w''m'"),
            "{create}"
        );
        assert!(write_watermark("dbo", "wm").contains("UPDATE [dbo].[wm] SET watermark = @P1"));
        assert!(find_watermark("dbo", "wm").contains("FROM [cdc].[dbo_wm_CT]"));
    }
}
