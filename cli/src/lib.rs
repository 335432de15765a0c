//! # annals-cli
//!
//! The `annals` command line — inspect, replay, verify, export/import and migrate an Annals
//! event store, run and rebuild its projections — as a library, so you can build the same CLI
//! into your own binary with your aggregate types and projections registered (then `replay`
//! works on them, `show` decodes their payloads, `projections …` and `dlq …` know them):
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     annals_cli::App::new()
//!         // .register::<my_domain::Account>()
//!         // .projection::<annals_projections::SledModel, _>(my_domain::Balances::new())
//!         // .projection_with::<annals_projections::PgModel, _>(
//!         //     my_domain::Ledger::new(),
//!         //     annals_cli::ProjectionOptions::new().partitions(8),
//!         // )
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
mod projections;
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
pub use open::{open, Backend, OpenMode, OpenedStore};
pub use projections::{CliModel, ProjectionOptions};
pub use registry::{Registry, ReplayPoint, ReplayedChanges, ReplayedState, Replayer};
pub use replayer::AggregateReplayer;

use args::{Command, ProjectionsCommand};
use output::Out;

/// The CLI, with the aggregate types and projections it knows.
#[derive(Debug, Default)]
pub struct App {
    registry: Registry,
    projections: projections::Projections,
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

    /// Teaches the CLI a projection and its read model `M` ([`SledModel`] or, with the
    /// `postgres` feature, `PgModel`), run with the default [`ProjectionOptions`] (one
    /// partition, the stop policy): `projections …` and `dlq …` then work on it.
    ///
    /// The settings must be those the application runs it with (see
    /// [`projection_with`](Self::projection_with)); two projections with one name are refused
    /// when a projection command runs.
    ///
    /// [`SledModel`]: annals_projections::SledModel
    #[must_use]
    pub fn projection<M, P>(self, projection: P) -> Self
    where
        M: CliModel,
        P: annals_projections::Projection<M>,
    {
        self.projection_with(projection, ProjectionOptions::new())
    }

    /// [`projection`](Self::projection) with its settings: **the partition count the
    /// application uses** (its checkpoints are kept per partition), and the error policy,
    /// batch size and retries `projections run` and `dlq retry` run it with.
    #[must_use]
    pub fn projection_with<M, P>(mut self, projection: P, options: ProjectionOptions) -> Self
    where
        M: CliModel,
        P: annals_projections::Projection<M>,
    {
        let name = projection.name().clone();
        let projection = Arc::new(projection);
        self.projections
            .insert::<M, P>(name, options, move |_| projection.clone());
        self
    }

    /// [`projection_with`](Self::projection_with) for a projection built on the store (one
    /// that decodes events through a `Repository` of it, say): `make` builds it once the CLI
    /// has opened the store given with `--store`. The projection it builds must be named
    /// `name`.
    ///
    /// ```no_run
    /// # use annals::{BoxError, RecordedEvent};
    /// # use annals_projections::{Projection, ProjectionName, SledModel, SledTx};
    /// # use annals_sled::SledEventStore;
    /// /// Events per stream, with the store at hand.
    /// struct Counts {
    ///     name: ProjectionName,
    ///     store: SledEventStore,
    /// }
    /// # impl Projection<SledModel> for Counts {
    /// #     fn name(&self) -> &ProjectionName { &self.name }
    /// #     async fn handle(&self, _: &mut SledTx, _: &[RecordedEvent]) -> Result<(), BoxError> { Ok(()) }
    /// # }
    ///
    /// # fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    /// let name = ProjectionName::new("counts")?;
    /// let exit = annals_cli::App::new()
    ///     .projection_on::<SledModel, _>(name.clone(), Default::default(), move |store| Counts {
    ///         name: name.clone(),
    ///         store: store.clone(),
    ///     })
    ///     .run();
    /// # Ok(exit)
    /// # }
    /// ```
    #[must_use]
    pub fn projection_on<M, P>(
        mut self,
        name: annals_projections::ProjectionName,
        options: ProjectionOptions,
        make: impl Fn(&M::Store) -> P + Send + Sync + 'static,
    ) -> Self
    where
        M: CliModel,
        P: annals_projections::Projection<M>,
    {
        self.projections
            .insert::<M, P>(name, options, move |store| Arc::new(make(store)));
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
        // A worker names the partitions' leases it takes after itself.
        let holder = match &cli.command {
            Command::Projections(ProjectionsCommand::Run { worker_id, .. }) => worker_id.as_deref(),
            _ => None,
        };
        let store = open::open_as(url, mode, holder).await?;
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
            Command::Projections(command) => {
                commands::projections::projections(&cx, &self.projections, command).await
            }
            Command::Dlq(command) => commands::dlq::dlq(&cx, &self.projections, command).await,
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
        // Above the progress bar on screen, if any: a warning is never drawn over.
        .with_writer(progress::LogWriter::default)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
