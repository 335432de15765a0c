//! Criterion benches of the hot paths: codec encode/decode, append (single, batch, concurrent),
//! stream load with and without a snapshot, `read_all` paging, on the sled store.
//! `cargo bench -p annals-benches`.

use annals::codec::{Codec, Json};
use annals::{
    EventStore, ExpectedVersion, Position, ReadAll, ReadStream, Snapshot, SnapshotStore, StreamId,
    Version,
};
use annals_benches::payload::{batch, event};
use annals_sled::{Durability, SledEventStore};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures::TryStreamExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn store(rt: &tokio::runtime::Runtime, durability: Durability) -> SledEventStore {
    rt.block_on(
        SledEventStore::builder()
            .temporary()
            .durability(durability)
            .open(),
    )
    .expect("open")
}

fn appends(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sled.append");
    for (name, durability) in [
        ("buffered", Durability::Buffered),
        ("durable", Durability::Flush),
    ] {
        let s = store(&rt, durability);
        let id = StreamId::new(format!("bench-{name}")).expect("id");
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}/single"), |b| {
            b.to_async(&rt).iter(|| async {
                s.append(&id, ExpectedVersion::Any, vec![event(1)])
                    .await
                    .expect("append")
            })
        });
        group.throughput(Throughput::Elements(100));
        group.bench_function(format!("{name}/batch100"), |b| {
            b.to_async(&rt).iter_batched(
                || batch(0, 100),
                |events| async {
                    s.append(&id, ExpectedVersion::Any, events)
                        .await
                        .expect("append")
                },
                BatchSize::SmallInput,
            )
        });
        group.throughput(Throughput::Elements(16));
        group.bench_function(format!("{name}/concurrent16"), |b| {
            b.to_async(&rt).iter(|| async {
                let tasks: Vec<_> = (0..16)
                    .map(|t| {
                        let s = s.clone();
                        tokio::spawn(async move {
                            let id = StreamId::new(format!("bench-c{t}")).expect("id");
                            s.append(&id, ExpectedVersion::Any, vec![event(t)])
                                .await
                                .expect("append")
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
            })
        });
    }
    group.finish();
}

fn reads(c: &mut Criterion) {
    let rt = runtime();
    let s = store(&rt, Durability::Buffered);
    let id = StreamId::new("bench-load").expect("id");
    rt.block_on(async {
        for i in (0..10_000).step_by(100) {
            s.append(&id, ExpectedVersion::exact(i), batch(i, 100))
                .await
                .expect("fill");
        }
        s.flush().await.expect("flush");
    });
    let mut group = c.benchmark_group("sled.read");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("stream_load/10k", |b| {
        b.to_async(&rt).iter(|| async {
            let events: Vec<_> = s
                .read_stream(&id, ReadStream::forward())
                .try_collect()
                .await
                .expect("load");
            assert_eq!(events.len(), 10_000);
        })
    });
    // What a repository does for an aggregate snapshotted at version 9,900: the snapshot, then
    // only the 100 events after it.
    rt.block_on(async {
        s.save_snapshot(Snapshot::new(
            id.clone(),
            Version::new(9_900),
            "application/json",
            bytes::Bytes::from_static(b"{\"balance\":9900}"),
        ))
        .await
        .expect("snapshot");
    });
    // Counted as the 100 events it reads; compare the times of the two loads.
    group.throughput(Throughput::Elements(100));
    group.bench_function("stream_load/10k_with_snapshot_at_9900", |b| {
        b.to_async(&rt).iter(|| async {
            let snapshot = s
                .load_snapshot(&id)
                .await
                .expect("load snapshot")
                .expect("a snapshot");
            let events: Vec<_> = s
                .read_stream(&id, ReadStream::forward().from(snapshot.version.next()))
                .try_collect()
                .await
                .expect("load");
            assert_eq!(events.len(), 100);
        })
    });
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("read_all/pages_of_1024", |b| {
        b.to_async(&rt).iter(|| async {
            let mut from = Position::START;
            let mut total = 0;
            loop {
                let page: Vec<_> = s
                    .read_all(ReadAll::from(from).limit(1024))
                    .try_collect()
                    .await
                    .expect("page");
                let Some(last) = page.last() else { break };
                from = last.position.next();
                total += page.len();
            }
            assert_eq!(total, 10_000);
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    // A deposit-like event: id, account, amount, a note and some tags.
    type Deposit = (u64, String, u64, String, Vec<String>);
    let value: Deposit = (
        42,
        "account-42".to_owned(),
        12_345,
        "monthly salary, November".to_owned(),
        vec!["payroll".to_owned(), "recurring".to_owned()],
    );
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let json = Json;
    let bytes = json.encode(&value).expect("encode");
    group.bench_function("json/encode", |b| {
        b.iter(|| json.encode(std::hint::black_box(&value)).expect("encode"))
    });
    group.bench_function("json/decode", |b| {
        b.iter(|| {
            json.decode::<Deposit>(std::hint::black_box(&bytes))
                .expect("decode")
        })
    });
    let bincode = annals::codec::Bincode;
    let bytes = bincode.encode(&value).expect("encode");
    group.bench_function("bincode/encode", |b| {
        b.iter(|| {
            bincode
                .encode(std::hint::black_box(&value))
                .expect("encode")
        })
    });
    group.bench_function("bincode/decode", |b| {
        b.iter(|| {
            bincode
                .decode::<Deposit>(std::hint::black_box(&bytes))
                .expect("decode")
        })
    });
    group.finish();
}

criterion_group!(benches, codec, appends, reads);
criterion_main!(benches);
