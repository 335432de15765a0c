//! `annals`: the command line of the Annals event store.

use std::process::ExitCode;

fn main() -> ExitCode {
    annals_cli::App::new().run()
}
