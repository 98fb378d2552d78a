//! `source-postgres`: captures PostgreSQL tables over logical replication (pgoutput).

fn main() -> std::process::ExitCode {
    backfill_core::cli::main::<source_postgres::connector::PostgresConnector>()
}
