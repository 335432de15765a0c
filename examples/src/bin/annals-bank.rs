//! `annals-bank`: the `annals` CLI with the bank-account aggregate registered, so `replay`
//! folds `account-*` streams and `show` decodes their events.
//!
//! ```sh
//! cargo run -p annals-examples --bin annals-bank -- --store sled:annals-data replay account-ada1
//! ```

use std::process::ExitCode;

use annals_examples::bank_account::BankAccount;

fn main() -> ExitCode {
    annals_cli::App::new().register::<BankAccount>().run()
}
