//! `cdc`: runs a pipeline's captures and materializations (PIPELINE.md). The runtime names
//! no destination: the kinds this binary links are handed to it here.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cdc_runtime::cli::main(&[Box::new(materialize_postgres::Postgres)])
}
