//! The command line, as clap derive types.

use std::path::PathBuf;

use annals::{Position, Timestamp, Version};
use clap::{Args, Parser, Subcommand};

/// Inspect, replay, verify, export, import and migrate an Annals event store.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about, long_about = None)]
pub struct Cli {
    /// The store: `sled:<path>` or a `postgres://` URL (add `?schema=<name>` for a schema other
    /// than `annals`).
    #[arg(long, env = "ANNALS_STORE", global = true, value_name = "URL")]
    pub store: Option<String>,

    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,

    /// More logs on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List streams with their version and last write time.
    Streams {
        /// Only streams of this category.
        #[arg(long)]
        category: Option<String>,
    },
    /// Show a stream's events with all metadata.
    Show(ShowArgs),
    /// Follow the global log live until Ctrl-C.
    Tail {
        /// Only events of streams in this category.
        #[arg(long)]
        category: Option<String>,
        /// Start at this position (inclusive; `N` or `COMMIT/PREPARE`); default: the end.
        #[arg(long, value_name = "POSITION")]
        from: Option<Position>,
        /// Stop after this many events (default: follow until Ctrl-C).
        #[arg(long, hide = true)]
        count: Option<usize>,
    },
    /// An aggregate's state at a version or a time, or what changed between two versions.
    Replay(ReplayArgs),
    /// Check every record, stream and snapshot; exit 1 when a problem is found.
    Verify {
        /// How many problems to print at most.
        #[arg(long, default_value_t = 20)]
        max_problems: usize,
    },
    /// Write the global log (from a position) to a checksummed export file.
    Export {
        /// The file to write.
        file: PathBuf,
        /// Start at this position (inclusive).
        #[arg(long, value_name = "POSITION")]
        from: Option<Position>,
    },
    /// Append an export file's events to the store (idempotent: importing twice changes nothing).
    Import {
        /// The file to read.
        file: PathBuf,
    },
    /// Copy the whole store to another one, resumably, then compare both sides.
    Migrate {
        /// The target store URL.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Counts of streams, events, bytes and categories.
    Stats,
    /// Run, list, inspect, rebuild and reset the projections registered with this CLI.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// A projection's dead letters: the events it parked or skipped.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

/// `annals projections …`.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Run projections (all, or those named) until Ctrl-C or SIGTERM, printing their status:
    /// on PostgreSQL as one worker among others sharing the partitions, on sled as the one
    /// runner.
    Run {
        /// The projections to run (default: all registered).
        names: Vec<String>,
        /// This worker's id among the workers of a projection (PostgreSQL; default: host name,
        /// process id and a random part). Also names the worker in the partitions' leases.
        #[arg(long)]
        worker_id: Option<String>,
        /// Seconds between status lines.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        every: u64,
    },
    /// One line per projection: generation, state, checkpoint, lag, dead letters.
    List,
    /// Per partition: checkpoint, lag, parked and skipped counts, and on PostgreSQL its owner.
    Status {
        /// Only this projection.
        name: Option<String>,
    },
    /// Rebuild a projection into a new generation, then switch readers to it.
    Rebuild {
        /// The projection.
        name: String,
        /// Go on with an interrupted rebuild instead of starting it again.
        #[arg(long)]
        resume: bool,
        /// Keep the old generation's data after the switch.
        #[arg(long)]
        keep_old: bool,
    },
    /// Move every partition's checkpoint (of the active generation) to a position.
    Reset {
        /// The projection.
        name: String,
        /// The new checkpoint (`N` or `COMMIT/PREPARE`; 0 for the start of the log).
        #[arg(long, value_name = "POSITION")]
        to: Position,
        /// Do it (without it, the command says what it would do and exits 2).
        #[arg(long)]
        yes: bool,
    },
}

/// `annals dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List a projection's parked and skipped events (of one stream, or all).
    List {
        /// The projection.
        name: String,
        /// Only this stream's.
        stream: Option<String>,
    },
    /// Apply a stream's parked events again, in order.
    Retry {
        /// The projection.
        name: String,
        /// The stream.
        stream: String,
    },
    /// Drop a stream's parked events (the projection goes on without them).
    Drop {
        /// The projection.
        name: String,
        /// The stream.
        stream: String,
    },
}

/// `annals show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The stream id.
    pub stream: String,
    /// The first version to show.
    #[arg(long)]
    pub from: Option<Version>,
    /// The last version to show.
    #[arg(long)]
    pub to: Option<Version>,
}

/// `annals replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The stream id of the aggregate (`account-42`).
    pub stream: String,
    /// The state right after this version.
    #[arg(long, conflicts_with_all = ["as_of", "diff"])]
    pub at_version: Option<Version>,
    /// The state as it was at this time (RFC 3339, e.g. `2026-11-22T15:00:00Z`).
    #[arg(long, value_parser = parse_time, conflicts_with = "diff")]
    pub as_of: Option<Timestamp>,
    /// What changed between two versions: `V1..V2`.
    #[arg(long, value_parser = parse_range, value_name = "V1..V2")]
    pub diff: Option<(Version, Version)>,
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(text).map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))
}

fn parse_range(text: &str) -> Result<(Version, Version), String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not a range `V1..V2`"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map(Version::new)
            .map_err(|_| format!("`{s}` is not a version number"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        return Err(format!("the range {text} runs backwards"));
    }
    Ok((a, b))
}
