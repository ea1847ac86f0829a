//! The `graylane` command; see `graylane --help` and [`graylane::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(graylane::cli::run(std::env::args_os()))
}
