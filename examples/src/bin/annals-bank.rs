//! `annals-bank`: the `annals` CLI with the bank-account aggregate and the balances projection
//! registered, so `replay` folds `account-*` streams, `show` decodes their events, and
//! `projections …` / `dlq …` run, inspect and rebuild the balances.
//!
//! ```sh
//! cargo run -p annals-examples --bin annals-bank -- --store sled:annals-data replay account-ada1
//! cargo run -p annals-examples --bin annals-bank -- --store sled:annals-data projections list
//! ```

use std::process::ExitCode;

use annals_cli::ProjectionOptions;
use annals_examples::balances::Balances;
use annals_examples::bank_account::BankAccount;
use annals_projections::SledModel;

fn main() -> ExitCode {
    annals_cli::App::new()
        .register::<BankAccount>()
        // The quickstart runs it with one partition, the runner's default.
        .projection_on::<SledModel, _>(
            Balances::projection_name(),
            ProjectionOptions::new(),
            Balances::new,
        )
        .run()
}
