//! `source-sqlserver`: captures SQL Server tables from CDC change tables.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    backfill_core::cli::main::<source_sqlserver::connector::SqlServerConnector>()
}
