//! The sled store's scenarios (issue 4) and their raw-sled baselines.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use annals::{EventData, EventStore, ExpectedVersion, ReadStream, StreamId};
use annals_sled::{Durability, SledEventStore};
use futures::{StreamExt, TryStreamExt};

use crate::payload::{batch, event, payload};
use crate::{alternate, rate, timed, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// sled's cache size on both sides, the store's default.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The sled scenarios, in report order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(DurableConcurrent { flush_every: 16 }),
        Box::new(DurableConcurrent { flush_every: 100 }),
        Box::new(DurableRawDisk),
        Box::new(SingleAppends {
            durability: Durability::Flush,
        }),
        Box::new(SingleAppends {
            durability: Durability::Buffered,
        }),
        Box::new(Load10k),
        Box::new(Scale),
        Box::new(ScaleLoad),
        Box::new(Memory),
        Box::new(ReadAllMemory),
    ]
}

/// Opens an Annals store in `dir`.
pub async fn open_store(dir: &Path, durability: Durability) -> anyhow::Result<SledEventStore> {
    Ok(SledEventStore::builder()
        .path(dir.join("annals"))
        .durability(durability)
        .cache_bytes(CACHE_BYTES)
        .open()
        .await?)
}

/// Opens a raw sled database configured as the store configures its own.
pub fn open_raw(dir: &Path) -> anyhow::Result<sled::Db> {
    Ok(sled::Config::new()
        .path(dir.join("raw"))
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()?)
}

fn stream(n: u64) -> StreamId {
    StreamId::new(format!("bench-{n}")).expect("valid stream id")
}

/// Raw sled inserting `count` payloads under sequential keys, flushing every `flush_every`
/// inserts (never when 0): events/s.
/// Raw sled inserts of `payloads` under the keys `start..`, with a flush after every
/// `flush_every` (none for 0); the clock runs while `payloads` yields, so a lazy iterator's
/// work is timed and a made `Vec` is not.
fn raw_inserts_of(
    db: &sled::Db,
    start: u64,
    payloads: impl IntoIterator<Item = Vec<u8>>,
    flush_every: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut count = 0;
    for (i, payload) in (start..).zip(payloads) {
        db.insert(i.to_be_bytes(), payload)?;
        count += 1;
        if flush_every > 0 && count % flush_every == 0 {
            db.flush()?;
        }
    }
    Ok(rate(count, started.elapsed()))
}

/// Raw sled inserts of `count` payloads made as they go (keys `start..`).
fn raw_inserts(db: &sled::Db, start: u64, count: u64, flush_every: u64) -> anyhow::Result<f64> {
    raw_inserts_of(db, start, (start..start + count).map(payload), flush_every)
}

/// 16 tasks append single events to 16 streams with `Durability::Flush`; raw sled inserts the
/// same payloads with one flush per `flush_every` inserts. The target (0.60) is judged against
/// 16 — the same number of flushes a perfect group commit makes when 16 callers each wait for
/// their one append, the fair comparison the "same number of flushes" rule implies (issue 11).
/// The line against one flush per 100 inserts (issue 4's first baseline, which no store that
/// answers each caller after its own flush can reach) stays for information.
#[derive(Debug)]
struct DurableConcurrent {
    flush_every: u64,
}

/// `tasks` concurrent durable appenders of `per_task` single-event appends each, each to its own
/// stream, on a fresh store: events/s.
async fn concurrent_durable(tasks: u64, per_task: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path(), Durability::Flush).await?;
    let elapsed = timed(async {
        let mut running = Vec::new();
        for t in 0..tasks {
            let store = store.clone();
            running.push(tokio::spawn(async move {
                let id = stream(t);
                for i in 0..per_task {
                    store
                        .append(&id, ExpectedVersion::exact(i), vec![event(i)])
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in running {
            t.await??;
        }
        Ok(())
    })
    .await?;
    store.close().await?;
    Ok(rate(tasks * per_task, elapsed))
}

impl Scenario for DurableConcurrent {
    fn name(&self, s: &Settings) -> String {
        let base = if self.flush_every == 16 {
            "sled.append.durable.concurrent16".to_owned()
        } else {
            format!(
                "sled.append.durable.concurrent16.flush_per_{}",
                self.flush_every
            )
        };
        s.pick(format!("{base} (quick)"), base)
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            const TASKS: u64 = 16;
            let per_task: u64 = s.pick(150, 500);
            let total = TASKS * per_task;
            let medians = alternate(
                s.rounds,
                |_| concurrent_durable(TASKS, per_task),
                |_| async move {
                    let dir = tempfile::tempdir()?;
                    let db = open_raw(dir.path())?;
                    let flush_every = self.flush_every;
                    tokio::task::block_in_place(|| raw_inserts(&db, 0, total, flush_every))
                },
            )
            .await?;
            let target = if self.flush_every == 16 { 0.60 } else { 0.0 };
            Ok(Line::new(
                self.name(s),
                "events/s",
                medians,
                target,
                s.rounds,
            ))
        })
    }
}

/// Bytes of one event's frame in the log (`annals-sled` FORMAT.md: frame head, positions,
/// commit header, body) for the benchmark's single-event appends: what the raw disk writes per
/// event in [`DurableRawDisk`].
const FRAME_BYTES: usize = 240;

/// The same 16 concurrent durable appenders as `sled.append.durable.concurrent16`, against the
/// raw disk: the same bytes (one frame per event) written and `fdatasync`ed once per group of
/// 16, on a file preallocated with zeros (its best case). Information (issue 14): raw sled's
/// "flush" on Linux is `sync_file_range`, which neither flushes the drive's cache nor waits for
/// the file system's journal; the store's log makes each group durable with `fdatasync`.
#[derive(Debug)]
struct DurableRawDisk;

impl Scenario for DurableRawDisk {
    fn name(&self, s: &Settings) -> String {
        s.pick(
            "sled.append.durable.concurrent16.raw_disk (quick)",
            "sled.append.durable.concurrent16.raw_disk",
        )
        .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            const TASKS: u64 = 16;
            let per_task: u64 = s.pick(150, 500);
            let total = TASKS * per_task;
            let medians = alternate(
                s.rounds,
                |_| concurrent_durable(TASKS, per_task),
                |_| async move {
                    use std::io::Write as _;
                    use std::os::unix::fs::FileExt as _;
                    let dir = tempfile::tempdir()?;
                    let mut file = std::fs::File::create(dir.path().join("raw.log"))?;
                    let size = usize::try_from(total)? * FRAME_BYTES + (1 << 20);
                    file.write_all(&vec![0; size])?;
                    file.sync_all()?;
                    let group = vec![b'x'; 16 * FRAME_BYTES];
                    tokio::task::block_in_place(|| {
                        let started = Instant::now();
                        let mut offset = 0u64;
                        for _ in 0..total / 16 {
                            file.write_all_at(&group, offset)?;
                            file.sync_data()?;
                            offset += group.len() as u64;
                        }
                        Ok(rate(total, started.elapsed()))
                    })
                },
            )
            .await?;
            Ok(Line::new(self.name(s), "events/s", medians, 0.0, s.rounds))
        })
    }
}

/// One task appends single events, one per append: with `Durability::Flush` against raw sled
/// inserting and flushing each (`durable.single`), with `Durability::Buffered` against raw sled
/// inserting without flushes (`buffered.single`).
#[derive(Debug)]
struct SingleAppends {
    durability: Durability,
}

impl SingleAppends {
    fn durable(&self) -> bool {
        self.durability == Durability::Flush
    }
}

impl Scenario for SingleAppends {
    fn name(&self, s: &Settings) -> String {
        let base = if self.durable() {
            "sled.append.durable.single"
        } else {
            "sled.append.buffered.single"
        };
        s.pick(format!("{base} (quick)"), base.to_owned())
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let (count, flush_every, target): (u64, u64, f64) = if self.durable() {
                (s.pick(600, 2000), 1, 0.80)
            } else {
                (s.pick(20_000, 100_000), 0, 0.50)
            };
            let durability = self.durability;
            let medians = alternate(
                s.rounds,
                |_| async move {
                    let dir = tempfile::tempdir()?;
                    let store = open_store(dir.path(), durability).await?;
                    let id = stream(0);
                    // Both sides make their input before the clock starts: events here,
                    // payloads there.
                    let events: Vec<EventData> = (0..count).map(event).collect();
                    let elapsed = timed(async {
                        for (i, e) in (0..count).zip(events) {
                            store
                                .append(&id, ExpectedVersion::exact(i), vec![e])
                                .await?;
                        }
                        Ok(())
                    })
                    .await?;
                    store.close().await?;
                    Ok(rate(count, elapsed))
                },
                |_| async move {
                    let dir = tempfile::tempdir()?;
                    let db = open_raw(dir.path())?;
                    let payloads: Vec<Vec<u8>> = (0..count).map(payload).collect();
                    tokio::task::block_in_place(|| raw_inserts_of(&db, 0, payloads, flush_every))
                },
            )
            .await?;
            Ok(Line::new(
                self.name(s),
                "events/s",
                medians,
                target,
                s.rounds,
            ))
        })
    }
}

/// Loading a 10,000-event stream (`read_stream` to the end, every event decoded and checked)
/// against a raw sled range scan copying out the same number of records.
#[derive(Debug)]
struct Load10k;

impl Scenario for Load10k {
    fn name(&self, _: &Settings) -> String {
        "sled.load.10k".into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            const EVENTS: u64 = 10_000;
            const LOADS: u64 = 5;
            let dir = tempfile::tempdir()?;
            let store = open_store(dir.path(), Durability::Buffered).await?;
            let id = stream(0);
            for i in (0..EVENTS).step_by(100) {
                store
                    .append(&id, ExpectedVersion::exact(i), batch(i, 100))
                    .await?;
            }
            store.flush().await?;
            let db = open_raw(dir.path())?;
            for i in 0..EVENTS {
                let mut key = b"Sbench-0\xFF".to_vec();
                key.extend_from_slice(&(i + 1).to_be_bytes());
                db.insert(key, payload(i))?;
            }
            db.flush()?;
            let (store, db, id) = (&store, &db, &id);
            let medians = alternate(
                s.rounds,
                |_| async move {
                    let started = Instant::now();
                    for _ in 0..LOADS {
                        let events: Vec<_> = store
                            .read_stream(id, ReadStream::forward())
                            .try_collect()
                            .await?;
                        anyhow::ensure!(events.len() as u64 == EVENTS, "short load");
                    }
                    Ok(rate(EVENTS * LOADS, started.elapsed()))
                },
                |_| async move {
                    let started = Instant::now();
                    for _ in 0..LOADS {
                        let mut lo = b"Sbench-0\xFF".to_vec();
                        lo.extend_from_slice(&1u64.to_be_bytes());
                        let mut hi = b"Sbench-0\xFF".to_vec();
                        hi.extend_from_slice(&EVENTS.to_be_bytes());
                        let mut out = Vec::with_capacity(usize::try_from(EVENTS)?);
                        for item in db.range(lo..=hi) {
                            let (_, value) = item?;
                            out.push(value.to_vec());
                        }
                        anyhow::ensure!(out.len() as u64 == EVENTS, "short scan");
                    }
                    Ok(rate(EVENTS * LOADS, started.elapsed()))
                },
            )
            .await?;
            store.close().await?;
            Ok(Line::new(self.name(s), "events/s", medians, 0.50, s.rounds))
        })
    }
}

/// Fills `store` with `count` events: batches of 100 to 1,000 streams from 4 tasks.
pub async fn fill(store: &SledEventStore, start: u64, count: u64) -> anyhow::Result<()> {
    const TASKS: u64 = 4;
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = start + t * 100;
            while n < start + count {
                let id = stream(1_000_000 + (n / 100) % 1000);
                store
                    .append(&id, ExpectedVersion::Any, batch(n, 100))
                    .await?;
                n += TASKS * 100;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Append throughput with 1,000,000 events stored against the same with 10,000 stored: the
/// same window of appends (batches of 10 to 100 streams, `Durability::Buffered`) on a small
/// and a large store, alternately. The ratio is rate(large) / rate(small).
#[derive(Debug)]
struct Scale;

impl Scenario for Scale {
    fn name(&self, s: &Settings) -> String {
        s.pick(
            "sled.append.scale.100k_vs_10k (quick)",
            "sled.append.scale.1m_vs_10k",
        )
        .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let window: u64 = s.pick(10_000, 20_000);
            let (_small_dir, small_store) = scale_store(10_000).await?;
            let (_large_dir, large_store) = scale_store(s.pick(100_000, 1_000_000)).await?;
            let append_window = |store: SledEventStore, round: usize| async move {
                let started = Instant::now();
                let base = 10_000_000 + round as u64 * window;
                for i in (0..window).step_by(10) {
                    let id = stream(2_000_000 + (i / 10) % 100);
                    store
                        .append(&id, ExpectedVersion::Any, batch(base + i, 10))
                        .await?;
                }
                Ok(rate(window, started.elapsed()))
            };
            let medians = alternate(
                s.rounds,
                |round| append_window(large_store.clone(), round),
                |round| append_window(small_store.clone(), round),
            )
            .await?;
            small_store.close().await?;
            large_store.close().await?;
            Ok(Line::new(self.name(s), "events/s", medians, 0.80, s.rounds))
        })
    }
}

/// A buffered store holding `events` events in 1,000 streams, plus the 2,000-event stream
/// `bench-loadme` written last, flushed.
async fn scale_store(events: u64) -> anyhow::Result<(tempfile::TempDir, SledEventStore)> {
    let dir = tempfile::tempdir()?;
    let store = open_store(dir.path(), Durability::Buffered).await?;
    fill(&store, 0, events).await?;
    let id = StreamId::new("bench-loadme")?;
    for i in (0..LOADME).step_by(100) {
        store
            .append(&id, ExpectedVersion::exact(i), batch(20_000_000 + i, 100))
            .await?;
    }
    store.flush().await?;
    Ok((dir, store))
}

/// The length of the stream [`ScaleLoad`] loads.
const LOADME: u64 = 2_000;

/// Loading a 2,000-event stream from a store holding 1,000,000 events against the same load
/// from a store holding 10,000: the ratio is rate@1M / rate@10k (the "within 20%").
#[derive(Debug)]
struct ScaleLoad;

impl Scenario for ScaleLoad {
    fn name(&self, s: &Settings) -> String {
        s.pick(
            "sled.load.scale.100k_vs_10k (quick)",
            "sled.load.scale.1m_vs_10k",
        )
        .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            const LOADS: u64 = 20;
            let (_small_dir, small_store) = scale_store(10_000).await?;
            let (_large_dir, large_store) = scale_store(s.pick(100_000, 1_000_000)).await?;
            let load = |store: SledEventStore| async move {
                let id = StreamId::new("bench-loadme")?;
                let started = Instant::now();
                for _ in 0..LOADS {
                    let events: Vec<_> = store
                        .read_stream(&id, ReadStream::forward())
                        .try_collect()
                        .await?;
                    anyhow::ensure!(events.len() as u64 == LOADME, "short load");
                }
                Ok(rate(LOADME * LOADS, started.elapsed()))
            };
            let medians = alternate(
                s.rounds,
                |_| load(large_store.clone()),
                |_| load(small_store.clone()),
            )
            .await?;
            small_store.close().await?;
            large_store.close().await?;
            Ok(Line::new(self.name(s), "events/s", medians, 0.80, s.rounds))
        })
    }
}

/// Peak memory (VmHWM) of a child process appending 1,000,000 events with the default store
/// settings, against the 300 MiB budget: `annals` is the peak, `baseline` the budget, and the
/// ratio budget / peak, so that 1.0 or more passes.
#[derive(Debug)]
struct Memory;

/// The budget of the memory scenario, in MiB.
pub const MEMORY_BUDGET_MIB: f64 = 300.0;

impl Scenario for Memory {
    fn name(&self, s: &Settings) -> String {
        s.pick("sled.memory.append.100k (quick)", "sled.memory.append.1m")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(100_000, 1_000_000);
            let dir = tempfile::tempdir()?;
            let count_text = count.to_string();
            let args = [
                "--memory-child".as_ref(),
                count_text.as_ref(),
                dir.path().as_os_str(),
            ];
            let peak = crate::child_peak_mib(args).await?;
            Ok(Line {
                scenario: self.name(s),
                unit: "MiB",
                annals: peak,
                baseline: MEMORY_BUDGET_MIB,
                ratio: MEMORY_BUDGET_MIB / peak,
                target: 1.0,
                floor: None,
                rounds: 1,
            })
        })
    }
}

/// The memory child's work: appends `count` events to a default store in `dir`, then returns
/// the process's peak resident set (VmHWM) in KiB.
///
/// # Errors
///
/// Store failures, or a `/proc/self/status` without `VmHWM`.
pub async fn memory_child(count: u64, dir: &Path) -> anyhow::Result<u64> {
    let store = SledEventStore::builder()
        .path(dir.join("annals"))
        .open()
        .await?;
    fill(&store, 0, count).await?;
    store.close().await?;
    crate::peak_kib()
}

/// The budget of `sled.read_all.memory.*`, in MiB: the peak resident set of a process reading
/// the whole log of the larger store, minus that of one reading the smaller (issue 14).
pub const READ_MEMORY_BUDGET_MIB: f64 = 64.0;
/// Streams of the stores `sled.read_all.memory.*` reads.
const READ_STREAMS: u64 = 10_000;
/// Payload bytes of their events.
const READ_PAYLOAD: usize = 200;

/// Memory of a full-log read against the size of the store: the peak RSS (VmHWM) of a child
/// process that opens a store of 3,000,000 events (200-byte payloads, 10,000 streams; quick:
/// 1,000,000) and reads its whole log with `read_all`, minus the same for a store of 300,000
/// (quick: 100,000). Each store is filled by a child of its own first, so the fill's peak is
/// not counted. `annals` is the difference, `baseline` the 64 MiB budget, and the ratio
/// budget / difference (a difference under 1 MiB counts as 1), so that 1.0 or more passes.
#[derive(Debug)]
struct ReadAllMemory;

impl Scenario for ReadAllMemory {
    fn name(&self, s: &Settings) -> String {
        s.pick(
            "sled.read_all.memory.1m_vs_100k (quick)",
            "sled.read_all.memory.3m_vs_300k",
        )
        .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let (small, large): (u64, u64) = s.pick((100_000, 1_000_000), (300_000, 3_000_000));
            let dir = tempfile::tempdir()?;
            let mut peaks = Vec::new();
            for count in [small, large] {
                let store = dir.path().join(format!("store-{count}"));
                read_memory_run("fill", count, &store).await?;
                peaks.push(read_memory_run("read", count, &store).await?);
            }
            let difference = peaks[1] - peaks[0];
            Ok(Line {
                scenario: self.name(s),
                unit: "MiB",
                annals: difference,
                baseline: READ_MEMORY_BUDGET_MIB,
                ratio: READ_MEMORY_BUDGET_MIB / difference.max(1.0),
                target: 1.0,
                floor: None,
                rounds: 1,
            })
        })
    }
}

/// Runs one step of [`read_memory_child`] in a child process; returns its peak in MiB.
async fn read_memory_run(step: &str, count: u64, dir: &Path) -> anyhow::Result<f64> {
    let count_text = count.to_string();
    let args = [
        "--read-memory-child".as_ref(),
        step.as_ref(),
        count_text.as_ref(),
        dir.as_os_str(),
    ];
    crate::child_peak_mib(args).await
}

/// A JSON payload of exactly [`READ_PAYLOAD`] bytes.
fn read_payload(n: u64) -> Vec<u8> {
    let mut out = format!("{{\"amount\":{n},\"note\":\"").into_bytes();
    out.resize(READ_PAYLOAD - 2, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// The read memory children's work. `fill`: fills a store in `dir` with `count` events
/// (200-byte payloads, batches of 100 in turn over 10,000 streams, `Durability::Buffered`) and
/// closes it. `read`: opens it with the default settings, reads its whole log with
/// `read_all` (every event must be there) and closes it. `subscribe`: the same with
/// `subscribe_all` from the start; `verify`: runs `verify` (both for manual checks, not lines). Returns the process's peak resident
/// set (VmHWM) in KiB.
///
/// # Errors
///
/// Store failures, a short log, an unknown step, or a `/proc/self/status` without `VmHWM`.
pub async fn read_memory_child(step: &str, count: u64, dir: &Path) -> anyhow::Result<u64> {
    match step {
        "fill" => {
            let store = SledEventStore::builder()
                .path(dir)
                .durability(Durability::Buffered)
                .open()
                .await?;
            const TASKS: u64 = 4;
            let store = Arc::new(store);
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = t * 100;
                    while n < count {
                        let id = StreamId::new(format!("read-{}", (n / 100) % READ_STREAMS))?;
                        let events = (n..n + 100)
                            .map(|i| {
                                EventData::new(
                                    "Deposited",
                                    annals::CONTENT_TYPE_JSON,
                                    read_payload(i),
                                )
                            })
                            .collect();
                        store.append(&id, ExpectedVersion::Any, events).await?;
                        n += TASKS * 100;
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            store.close().await?;
        }
        "read" => {
            let store = SledEventStore::builder().path(dir).open().await?;
            let read = store
                .read_all(annals::ReadAll::all())
                .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                .await?;
            anyhow::ensure!(read == count, "read {read} events of {count}");
            store.close().await?;
        }
        "subscribe" => {
            // The same read as a subscription from the start (what a projection's catch-up
            // does), to its `count`-th event.
            let store = SledEventStore::builder().path(dir).open().await?;
            let read = annals::subscribe_all(
                store.clone(),
                annals::Position::START,
                annals::Filter::all(),
            )
            .take(usize::try_from(count)?)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await?;
            anyhow::ensure!(read == count, "read {read} events of {count}");
            store.close().await?;
        }
        "verify" => {
            let store = SledEventStore::builder().path(dir).open().await?;
            let report = store.verify().await?;
            anyhow::ensure!(report.is_clean(), "{report}");
            store.close().await?;
        }
        other => anyhow::bail!("unknown read memory child step {other:?}"),
    }
    crate::peak_kib()
}
