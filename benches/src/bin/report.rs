//! `report`: every scenario against its raw baseline, in one run.
//!
//! ```text
//! cargo run --release -p annals-benches --bin report -- [--quick] [--json] [--only PREFIX] [--rounds N]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use annals_benches::{all_scenarios, pg_scenarios, proj_scenarios, sled_scenarios, Settings};

const USAGE: &str =
    "usage: report [--quick] [--json] [--only PREFIX] [--rounds N]\n\n\
     --quick        smaller counts (the whole report in under 3 minutes)\n\
     --json         one JSON object per line: scenario, unit, annals, baseline, ratio, target, rounds\n\
     --only PREFIX  only the scenarios whose name starts with PREFIX\n\
     --rounds N     A/B rounds per scenario (at least 3; default 3 quick, 5 full)";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut quick = false;
    let mut json = false;
    let mut only = String::new();
    let mut rounds = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--only" => only = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?,
            "--rounds" => {
                let n: usize = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?.parse()?;
                anyhow::ensure!(n >= 3, "at least 3 rounds");
                rounds = Some(n);
            }
            "--memory-child" => {
                // Internal: the child process of the memory scenario.
                let count: u64 = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?.parse()?;
                let dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let kib = runtime.block_on(sled_scenarios::memory_child(count, &dir))?;
                println!("VMHWM_KIB {kib}");
                return Ok(());
            }
            "--proj-worker-child" => {
                // Internal: a worker process of `proj.failover`.
                let mut arg = || args.next().ok_or_else(|| anyhow::anyhow!(USAGE));
                let (connection, schema, table, id) = (arg()?, arg()?, arg()?, arg()?);
                let job = annals_benches::proj_workers::WorkerJob::parse(args.by_ref())?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(annals_benches::proj_workers::worker_child(
                    &connection,
                    &schema,
                    &table,
                    &id,
                    job,
                ))?;
                return Ok(());
            }
            "--proj-lag-child" => {
                // Internal: the worker process of `proj.live.lag.pg.process`.
                let mut arg = || args.next().ok_or_else(|| anyhow::anyhow!(USAGE));
                let (connection, schema, table) = (arg()?, arg()?, arg()?);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(annals_benches::proj_lag::lag_child(
                    &connection,
                    &schema,
                    &table,
                ))?;
                return Ok(());
            }
            "--read-memory-child" => {
                // Internal: the child processes of the full-log read memory scenario.
                let step = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?;
                let count: u64 = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?.parse()?;
                let dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let kib =
                    runtime.block_on(sled_scenarios::read_memory_child(&step, count, &dir))?;
                println!("VMHWM_KIB {kib}");
                return Ok(());
            }
            "--proj-memory-child" => {
                // Internal: the child processes of the projection memory scenario.
                let step = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?;
                let count: u64 = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?.parse()?;
                let dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let kib = runtime.block_on(proj_scenarios::memory_child(&step, count, &dir))?;
                println!("VMHWM_KIB {kib}");
                return Ok(());
            }
            "--rebuild-memory-child" => {
                // Internal: the child process of `rebuild.pg.memory`.
                let mut arg = || args.next().ok_or_else(|| anyhow::anyhow!(USAGE));
                let (connection, schema) = (arg()?, arg()?);
                let count: u64 = arg()?.parse()?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let kib = runtime.block_on(annals_benches::rebuild_scenarios::memory_child(
                    &connection,
                    &schema,
                    count,
                ))?;
                println!("VMHWM_KIB {kib}");
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let settings = Settings {
        quick,
        rounds: rounds.unwrap_or(if quick { 3 } else { 5 }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut failed = false;
    if !json {
        println!(
            "{:<44} {:>14} {:>14} (medians of {} A/B rounds; {} mode)",
            "scenario",
            "annals",
            "baseline",
            settings.rounds,
            if quick { "quick" } else { "full" }
        );
    }
    for scenario in all_scenarios() {
        let name = scenario.name(&settings);
        if !name.starts_with(&only) {
            continue;
        }
        match runtime.block_on(scenario.run(&settings)) {
            Ok(line) if json => println!("{}", line.to_json()),
            Ok(line) => println!("{}", line.to_text()),
            Err(error) => {
                failed = true;
                eprintln!("{name}: failed: {error:#}");
            }
        }
    }
    // The PostgreSQL scenarios' server, if one was started.
    drop(runtime);
    pg_scenarios::stop_server();
    if !json {
        println!("total time {:.1} s", started.elapsed().as_secs_f64());
    }
    anyhow::ensure!(!failed, "some scenarios failed");
    Ok(())
}
