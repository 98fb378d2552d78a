//! `cdc`: runs a pipeline's captures and lands their units in collections (PIPELINE.md).

fn main() -> std::process::ExitCode {
    cdc_runtime::cli::main()
}
