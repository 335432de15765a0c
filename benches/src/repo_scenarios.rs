//! Commands through the repository (issue 7): a bank account receiving deposits through
//! [`Repository::execute`], against the raw [`EventStore::append`] rate on the same backend.
//!
//! Both sides start from a fresh store holding each account's `Opened` event (written before
//! the clock starts) and then write one `Deposited` event per command, from 1 task (one
//! aggregate) or 8 tasks (8 aggregates, one each). The baseline appends the very events the
//! repository would write — encoded with the same codec, with the same metadata — at `Exact`
//! versions the caller tracks, so the difference is the repository's own work: the cache
//! lookup, `handle`, encoding, `apply`, and the cache update. Stores use their defaults (sled:
//! `Durability::Flush`; PostgreSQL: a pool of 16).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use annals::codec::{Codec, Json};
use annals::{
    CommandContext, DomainEvent, EventData, EventStore, ExpectedVersion, Repository, SnapshotStore,
    StreamId, Timestamp,
};
use annals_examples::bank_account::{AccountCommand, AccountEvent, BankAccount};
use annals_sled::SledEventStore;

use crate::{alternate, pg_scenarios, rate, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// The repository scenarios, in report order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(Commands {
            backend: Backend::Sled,
            aggregates: 1,
        }),
        Box::new(Commands {
            backend: Backend::Sled,
            aggregates: 8,
        }),
        Box::new(Commands {
            backend: Backend::Postgres,
            aggregates: 1,
        }),
        Box::new(Commands {
            backend: Backend::Postgres,
            aggregates: 8,
        }),
    ]
}

/// The event the repository writes for a deposit of `amount`, encoded as it encodes it.
///
/// # Errors
///
/// Codec failures.
pub fn deposited(amount: u64) -> anyhow::Result<EventData> {
    encoded(&AccountEvent::Deposited { amount })
}

fn encoded(event: &AccountEvent) -> anyhow::Result<EventData> {
    let context = CommandContext::new();
    Ok(EventData {
        id: context.event_id(0),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        content_type: Json.content_type().to_owned(),
        payload: event.encode(&Json)?.into(),
        metadata: context.metadata(Timestamp::now()),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sled,
    Postgres,
}

/// `aggregates` accounts, each receiving deposits from its own task.
#[derive(Debug)]
struct Commands {
    backend: Backend,
    aggregates: u64,
}

impl Commands {
    /// Commands per aggregate.
    fn per_aggregate(&self, s: &Settings) -> u64 {
        let total: u64 = s.pick(600, 2_000);
        if self.aggregates == 1 {
            total
        } else {
            total / self.aggregates
        }
    }
}

impl Scenario for Commands {
    fn name(&self, s: &Settings) -> String {
        let backend = match self.backend {
            Backend::Sled => "sled",
            Backend::Postgres => "pg",
        };
        let shape = if self.aggregates == 1 {
            "one_aggregate".to_owned()
        } else {
            format!("{}_aggregates", self.aggregates)
        };
        let quick = if s.quick { " (quick)" } else { "" };
        format!("repo.{backend}.{shape}{quick}")
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let (aggregates, per) = (self.aggregates, self.per_aggregate(s));
            let medians = match self.backend {
                Backend::Sled => {
                    alternate(
                        s.rounds,
                        |_| async move {
                            let dir = tempfile::tempdir()?;
                            let store = SledEventStore::builder()
                                .path(dir.path().join("annals"))
                                .open()
                                .await?;
                            let measured = commands(store.clone(), aggregates, per).await?;
                            store.close().await?;
                            Ok(measured)
                        },
                        |_| async move {
                            let dir = tempfile::tempdir()?;
                            let store = SledEventStore::builder()
                                .path(dir.path().join("annals"))
                                .open()
                                .await?;
                            let measured = appends(store.clone(), aggregates, per).await?;
                            store.close().await?;
                            Ok(measured)
                        },
                    )
                    .await?
                }
                Backend::Postgres => {
                    let server = pg_scenarios::server()?;
                    let server = &server;
                    alternate(
                        s.rounds,
                        |_| async move {
                            let store = pg_scenarios::fresh_store(server, 16).await?;
                            let measured = commands(store.clone(), aggregates, per).await?;
                            let schema = store.schema().to_owned();
                            drop(store);
                            pg_scenarios::drop_schema(server, &schema).await?;
                            Ok(measured)
                        },
                        |_| async move {
                            let store = pg_scenarios::fresh_store(server, 16).await?;
                            let measured = appends(store.clone(), aggregates, per).await?;
                            let schema = store.schema().to_owned();
                            drop(store);
                            pg_scenarios::drop_schema(server, &schema).await?;
                            Ok(measured)
                        },
                    )
                    .await?
                }
            };
            let (annals, baseline) = medians;
            Ok(Line {
                scenario: self.name(s),
                unit: "commands/s",
                annals,
                baseline,
                ratio: annals / baseline,
                target: 0.70,
                floor: None,
                rounds: s.rounds,
            })
        })
    }
}

/// Opens `aggregates` accounts (untimed), then times `per` deposits to each, one task per
/// account, through `Repository::execute`: commands/s.
async fn commands<S>(store: S, aggregates: u64, per: u64) -> anyhow::Result<f64>
where
    S: EventStore + SnapshotStore + Clone + Send + Sync + 'static,
{
    let accounts: Repository<BankAccount, S> = Repository::new(store);
    for a in 0..aggregates {
        accounts
            .execute(a, AccountCommand::open("bench"), CommandContext::new())
            .await
            .map_err(|e| anyhow::anyhow!("open account {a}: {e}"))?;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..aggregates {
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                accounts
                    .execute(
                        a,
                        AccountCommand::Deposit { amount: i + 1 },
                        CommandContext::new(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("deposit on account {a}: {e}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let measured = rate(aggregates * per, started.elapsed());
    let last = accounts.load(0).await?;
    anyhow::ensure!(last.version.get() == per + 1, "account 0 missed deposits");
    Ok(measured)
}

/// The baseline of [`commands`]: the same accounts opened (untimed), then the same encoded
/// `Deposited` events appended with `EventStore::append` at `Exact` versions: events/s.
async fn appends<S>(store: S, aggregates: u64, per: u64) -> anyhow::Result<f64>
where
    S: EventStore + Clone + Send + Sync + 'static,
{
    let mut streams = Vec::new();
    for a in 0..aggregates {
        let stream = StreamId::new(format!("{}-{a}", <BankAccount as annals::Aggregate>::TYPE))?;
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![encoded(&AccountEvent::Opened {
                    owner: "bench".into(),
                })?],
            )
            .await?;
        streams.push(stream);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in streams {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                // Encoded in the loop, as the repository encodes per command.
                let event = deposited(i + 1)?;
                store
                    .append(&stream, ExpectedVersion::exact(i + 1), vec![event])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rate(aggregates * per, started.elapsed()))
}
