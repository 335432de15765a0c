//! A CLI with projections registered, run as a child process: this test binary re-run with
//! `ANNALS_CLI_CHILD` set to the arguments (a JSON array), so the tests drive the real
//! `App::run_from` in a process of its own, as `annals-bank` would.
//!
//! The projections:
//!
//! - `deposits` (sled): `Deposited` events per account stream, in the tree `deposits`;
//! - `fragile` (sled, park policy, no retries): every event per stream in the tree `seen`, failing
//!   on events of type `Poison` unless the child runs with `FRAGILE_HEALED` set;
//! - `tallies` (PostgreSQL, 2 partitions): events per stream in the table
//!   `<PG_SCHEMA>.tallies`.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use annals::{BoxError, Filter, RecordedEvent};
use annals_cli::{App, ProjectionOptions};
use annals_projections::{ErrorPolicy, Projection, ProjectionName, Retry, SledModel, SledTx};

const CHILD_ENV: &str = "ANNALS_CLI_CHILD";
/// What the child prints before the CLI runs: the test harness prints its own lines first.
const MARKER: &str = "--- annals cli child ---";
/// The schema of the PostgreSQL tests' store (the `tallies` table lives there).
pub const PG_SCHEMA: &str = "projected";

/// `Deposited` events per account.
pub struct Deposits(ProjectionName);

impl Projection<SledModel> for Deposits {
    fn name(&self) -> &ProjectionName {
        &self.0
    }
    fn filter(&self) -> Filter {
        Filter::all().category("account").event_type("Deposited")
    }
    async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        for event in events {
            count(tx, "deposits", event.stream_id.as_str())?;
        }
        Ok(())
    }
}

/// Every event per stream; fails on a `Poison` event unless healed.
pub struct Fragile(ProjectionName);

impl Projection<SledModel> for Fragile {
    fn name(&self) -> &ProjectionName {
        &self.0
    }
    async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        for event in events {
            if event.event_type == "Poison" && std::env::var_os("FRAGILE_HEALED").is_none() {
                return Err(format!("poisoned event in {}", event.stream_id).into());
            }
            count(tx, "seen", event.stream_id.as_str())?;
        }
        Ok(())
    }
}

fn count(tx: &mut SledTx, tree: &str, key: &str) -> Result<(), BoxError> {
    let n = match tx.get(tree, key)? {
        Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into()?),
        None => 0,
    };
    tx.insert(tree, key, (n + 1).to_be_bytes())?;
    Ok(())
}

/// `deposits` as the tests build it.
pub fn deposits() -> Deposits {
    Deposits(ProjectionName::new("deposits").unwrap())
}

/// `fragile` as the tests build it.
pub fn fragile() -> Fragile {
    Fragile(ProjectionName::new("fragile").unwrap())
}

/// `fragile`'s settings: park at the first failure.
pub fn fragile_options() -> ProjectionOptions {
    ProjectionOptions::new()
        .error_policy(ErrorPolicy::Park)
        .retry(Retry {
            attempts: 0,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        })
}

#[cfg(feature = "postgres")]
mod pg {
    use annals::{BoxError, RecordedEvent};
    use annals_projections::{PgModel, PgTx, Projection, ProjectionName};

    /// Events per stream in `<PG_SCHEMA>.tallies`.
    pub struct Tallies(pub ProjectionName);

    impl Projection<PgModel> for Tallies {
        fn name(&self) -> &ProjectionName {
            &self.0
        }
        async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
            for event in events {
                tx.client()
                    .execute(
                        &format!(
                            "INSERT INTO {}.tallies (stream, n) VALUES ($1, 1)
                             ON CONFLICT (stream) DO UPDATE SET n = tallies.n + 1",
                            super::PG_SCHEMA
                        ),
                        &[&event.stream_id.as_str()],
                    )
                    .await?;
            }
            Ok(())
        }
    }
}

#[cfg(feature = "postgres")]
pub use pg::Tallies;

/// The CLI the child runs.
fn app() -> App {
    let app = App::new()
        .projection::<SledModel, _>(deposits())
        .projection_with::<SledModel, _>(fragile(), fragile_options());
    #[cfg(feature = "postgres")]
    let app = app.projection_with::<annals_projections::PgModel, _>(
        Tallies(ProjectionName::new("tallies").unwrap()),
        ProjectionOptions::new().partitions(2),
    );
    app
}

/// The child: the CLI with the arguments of `ANNALS_CLI_CHILD`, exiting with its code.
#[test]
fn cli_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).expect("a JSON array of arguments");
    println!("\n{MARKER}");
    let code = app().run_from(std::iter::once("annals".to_owned()).chain(args));
    let code = (0u8..=2)
        .find(|n| std::process::ExitCode::from(*n) == code)
        .unwrap_or(101);
    std::process::exit(i32::from(code));
}

/// The child CLI `--store <store> <args…>`, to spawn.
pub fn child(store: &str, args: &[&str]) -> Command {
    let mut all = vec!["--store", store];
    all.extend_from_slice(args);
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "support::app::cli_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, serde_json::to_string(&all).unwrap())
        .env_remove("ANNALS_STORE")
        .env_remove("FRAGILE_HEALED")
        .stdin(Stdio::null());
    command
}

/// Runs the child CLI to its end; its stdout is the CLI's alone (see [`cli_stdout`]).
pub fn run(store: &str, args: &[&str]) -> Output {
    let mut output = child(store, args).output().expect("run the child CLI");
    output.stdout = cli_stdout(&output.stdout).into_bytes();
    output
}

/// What the CLI printed: the child's stdout after the marker.
pub fn cli_stdout(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    match text.split_once(&format!("{MARKER}\n")) {
        Some((_, cli)) => cli.to_owned(),
        None => panic!("the child never ran the CLI: {text}"),
    }
}
