//! `source-mysql`: captures MariaDB tables from the row-based binlog.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    backfill_core::cli::main::<source_mysql::connector::MysqlConnector>()
}
