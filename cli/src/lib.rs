//! # annals-cli
//!
//! The `annals` command line — inspect, replay, verify, export/import and migrate an Annals
//! event store — as a library, so you can build the same CLI into your own binary with your
//! aggregate types registered (then `replay` works on them and `show` decodes their payloads):
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     annals_cli::App::new()
//!         // .register::<my_domain::Account>()
//!         .run()
//! }
//! ```
//!
//! Stores are named by URL: `sled:<path>` or `postgres://…` (`?schema=<name>` picks a schema
//! other than `annals`); `ANNALS_STORE` is the default. Exit codes: 0 ok, 1 a problem was found
//! or the thing asked for does not exist, 2 usage or connection error.

mod args;
mod commands;
mod export_format;
mod failure;
mod open;
mod output;
mod progress;
mod registry;
mod replayer;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

pub use args::Cli;
pub use export_format::{
    ExportWriter, ExportedEvent, Reader as ExportReader, FORMAT, FORMAT_VERSION,
};
pub use failure::{CliResult, Failure};
pub use open::{open, OpenMode, OpenedStore};
pub use registry::{Registry, ReplayPoint, ReplayedChanges, ReplayedState, Replayer};
pub use replayer::AggregateReplayer;

use args::Command;
use output::Out;

/// The CLI, with the aggregate types it knows.
#[derive(Debug, Default)]
pub struct App {
    registry: Registry,
}

pub(crate) struct Context<'a> {
    pub(crate) store: &'a OpenedStore,
    pub(crate) out: &'a Out,
}

impl App {
    /// A CLI that knows no aggregate type (`replay` then explains how to register one).
    pub fn new() -> Self {
        App::default()
    }

    /// Teaches the CLI an aggregate type: `replay` folds its streams, `show` and `tail` decode
    /// its events to JSON.
    #[must_use]
    pub fn register<A>(self) -> Self
    where
        A: annals::Aggregate + serde::Serialize,
        A::Event: serde::Serialize,
    {
        self.register_replayer(Arc::new(AggregateReplayer::<A>::new()))
    }

    /// Adds any [`Replayer`].
    #[must_use]
    pub fn register_replayer(mut self, replayer: Arc<dyn Replayer>) -> Self {
        self.registry.insert(replayer);
        self
    }

    /// Runs with the process's arguments and returns the exit code.
    pub fn run(self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// Runs with `args` (the first is the program name) and returns the exit code.
    pub fn run_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
        };
        init_logs(cli.verbose);
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("annals: cannot start the async runtime: {e}");
                return ExitCode::from(2);
            }
        };
        match runtime.block_on(self.execute(&cli)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                eprintln!("annals: {failure}");
                failure.exit_code()
            }
        }
    }

    async fn execute(&self, cli: &Cli) -> CliResult {
        let url = cli.store.as_deref().ok_or_else(|| {
            Failure::usage("no store given: pass --store sled:<path> or --store postgres://…, or set ANNALS_STORE")
        })?;
        // An import checks its whole file before the store is opened (or created): a refused
        // import writes nothing and leaves no new store behind. The CLI opens every store with
        // the default limits.
        let (mode, import_plan) = match &cli.command {
            Command::Import { file } => (
                OpenMode::CreateIfMissing,
                Some(commands::export::check_file(
                    file,
                    annals::Limits::default(),
                )?),
            ),
            _ => (OpenMode::Existing, None),
        };
        let store = open(url, mode).await?;
        let out = Out::new(cli.json);
        let cx = Context {
            store: &store,
            out: &out,
        };
        let registry = &self.registry;
        let result = match &cli.command {
            Command::Streams { category } => {
                commands::inspect::streams(&cx, category.as_deref()).await
            }
            Command::Show(args) => commands::inspect::show(&cx, registry, args).await,
            Command::Tail {
                category,
                from,
                count,
            } => commands::tail::tail(&cx, registry, category.clone(), *from, *count).await,
            Command::Replay(args) => commands::replay::replay(&cx, registry, args).await,
            Command::Verify { max_problems } => commands::verify::verify(&cx, *max_problems).await,
            Command::Export { file, from } => commands::export::export(&cx, file, *from).await,
            Command::Import { file } => match &import_plan {
                Some(plan) => commands::export::import(&cx, file, plan).await,
                None => Err(Failure::usage("import: the file was not checked")),
            },
            Command::Migrate { to } => commands::migrate::migrate(&cx, to).await,
            Command::Stats => commands::stats::stats(&cx).await,
        };
        store.close().await;
        result
    }
}

fn init_logs(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ANNALS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
