//! Criterion benches of the domain layer: the codecs on the bank account's events (Json against
//! Bincode, encode and decode) and loading an aggregate through the repository with and
//! without a snapshot. `cargo bench -p annals-benches --bench domain`.

use annals::codec::{Bincode, Codec, Json};
use annals::{CommandContext, DomainEvent, Repository, SnapshotPolicy};
use annals_examples::bank_account::{AccountCommand, AccountEvent, BankAccount};
use annals_sled::SledEventStore;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Events of every kind, as an account's history holds them.
fn events() -> Vec<AccountEvent> {
    vec![
        AccountEvent::Opened {
            owner: "Ada Lovelace".into(),
        },
        AccountEvent::Deposited { amount: 12_345 },
        AccountEvent::Withdrawn { amount: 2_345 },
        AccountEvent::Closed,
    ]
}

fn codec_bench<C: Codec>(c: &mut Criterion, name: &str, codec: C) {
    let events = events();
    let encoded: Vec<(&'static str, Vec<u8>)> = events
        .iter()
        .map(|e| (e.event_type(), e.encode(&codec).expect("encode")))
        .collect();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function(BenchmarkId::new("encode", name), |b| {
        b.iter(|| {
            for e in &events {
                std::hint::black_box(e.encode(&codec).expect("encode"));
            }
        })
    });
    group.bench_function(BenchmarkId::new("decode", name), |b| {
        b.iter(|| {
            for (event_type, bytes) in &encoded {
                std::hint::black_box(
                    AccountEvent::decode(&codec, event_type, bytes).expect("decode"),
                );
            }
        })
    });
    group.finish();
}

fn codecs(c: &mut Criterion) {
    codec_bench(c, "json", Json);
    codec_bench(c, "bincode", Bincode);
}

/// Events in the account loaded by [`loads`].
const HISTORY: u64 = 1_000;

fn loads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(SledEventStore::builder().temporary().open())
        .expect("open");
    let mut group = c.benchmark_group("repository.load");
    group.throughput(Throughput::Elements(HISTORY));
    for (name, policy) in [
        ("no_snapshot", SnapshotPolicy::Never),
        ("snapshot_every_100", SnapshotPolicy::Every(100)),
    ] {
        // No cache: every load reads the store.
        let accounts: Repository<BankAccount, _> = Repository::builder(store.clone())
            .snapshot_policy(policy)
            .cache_capacity(0)
            .build()
            .expect("repository");
        let id = format!("load{name}");
        rt.block_on(async {
            accounts
                .execute(&id, AccountCommand::open("bench"), CommandContext::new())
                .await
                .expect("open");
            for i in 1..HISTORY {
                accounts
                    .execute(
                        &id,
                        AccountCommand::Deposit { amount: i },
                        CommandContext::new(),
                    )
                    .await
                    .expect("deposit");
            }
        });
        group.bench_function(BenchmarkId::new("1000_events", name), |b| {
            b.to_async(&rt).iter(|| async {
                let loaded = accounts.load(&id).await.expect("load");
                assert_eq!(loaded.version.get(), HISTORY);
                loaded
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codecs, loads);
criterion_main!(benches);
