//! The `sis` binary.

fn main() -> std::process::ExitCode {
    sis::cli::main()
}
