//! `source-postgres`: captures PostgreSQL tables over logical replication (pgoutput).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    backfill_core::cli::main::<source_postgres::connector::PostgresConnector>()
}
