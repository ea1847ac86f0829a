//! The `graylane` command; see `graylane --help` and [`graylane_cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(graylane_cli::run(std::env::args_os()))
}
