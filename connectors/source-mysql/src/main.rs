//! `source-mysql`: captures MariaDB tables from the row-based binlog.

fn main() -> std::process::ExitCode {
    backfill_core::cli::main::<source_mysql::connector::MysqlConnector>()
}
