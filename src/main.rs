//! `hookgate`: parse the command line and hand over to `cli` (SPEC §2).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    hookgate::cli::main()
}
