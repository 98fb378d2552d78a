//! `source-sqlserver`: captures SQL Server tables from CDC change tables.

fn main() -> std::process::ExitCode {
    backfill_core::cli::main::<source_sqlserver::connector::SqlServerConnector>()
}
