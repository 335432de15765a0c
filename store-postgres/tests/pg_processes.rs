//! Wake-ups across real processes: a writer process appends and goes away — closing its store
//! and exiting, or killed with SIGKILL before it could notify anyone — and a subscriber in
//! this process, following along, still receives every event it acknowledged.
//!
//! The writer is this test binary itself, re-run with `ANNALS_PG_WRITER_MODE` set and
//! `--exact writer_child`; it connects to this binary's server with the connection string and
//! schema it is given. It appends one event and waits for a line on its stdin while the test
//! settles its subscriber on that event, so that what wakes the subscriber for the others is
//! exactly what the test is about (a subscriber that only starts reading after the writer is
//! gone would find every event on its first read, and prove nothing).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use annals::{
    subscribe_all, EventStore, ExpectedVersion, Filter, Position, ReadStream, RecordedEvent,
    StreamId,
};
use annals_postgres::PgEventStore;
use futures::StreamExt;
use support::{count_notifications, event, server, wait_for_count, wait_signalled};

const MODE_ENV: &str = "ANNALS_PG_WRITER_MODE";
const CONNECTION_ENV: &str = "ANNALS_PG_WRITER_CONNECTION";
const SCHEMA_ENV: &str = "ANNALS_PG_WRITER_SCHEMA";

/// After its appends the writer closes its store, then exits.
const CLOSE: &str = "close";
/// After its appends the writer waits to be killed.
const KILL: &str = "kill";

/// How many events the writer appends, one append each.
const EVENTS: u64 = 200;
/// What the writer prints once every append has returned.
const APPENDED: &str = "ANNALS-WRITER-APPENDED";
/// What the writer prints after its first append, before it waits for a line on its stdin to
/// append the others.
const FIRST: &str = "ANNALS-WRITER-FIRST";

/// Far longer than any test.
const NEVER: Duration = Duration::from_secs(3600);
/// A guard against hangs, never a speed assertion.
const GUARD: Duration = Duration::from_secs(30);

/// The writer process. Does nothing in a normal test run.
///
/// It notifies other processes for its first append and, for an hour, never again (its
/// [`notify_interval`](annals_postgres::PgEventStoreBuilder::notify_interval)): the
/// notification for all its other appends is owed when it closes its store or dies.
#[test]
fn writer_child() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return;
    };
    let connection = std::env::var(CONNECTION_ENV).expect("the connection string");
    let schema = std::env::var(SCHEMA_ENV).expect("the schema");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = PgEventStore::builder()
            .connection_string(connection)
            .schema(schema)
            .notify_interval(NEVER)
            .open()
            .await
            .expect("open the writer's store");
        let stream = StreamId::new("child-1").expect("id");
        for n in 1..=EVENTS {
            store
                .append(
                    &stream,
                    ExpectedVersion::exact(n - 1),
                    vec![event("Written", n)],
                )
                .await
                .expect("append");
            if n == 1 {
                // The test settles its subscriber on the first event before the others come.
                println!("{FIRST}");
                tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
                    .await
                    .expect("stdin thread")
                    .expect("the test's go-ahead");
            }
        }
        println!("{APPENDED}");
        if mode == KILL {
            std::future::pending::<()>().await;
        }
        store.close().await.expect("close");
    });
    // Returning ends the process at once: the harness exits with this test's result.
}

/// The writer process (killed, if still running, when dropped: a failing test never leaves it
/// behind) and the lines of its stdout.
struct Writer {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Writer {
    /// Starts the writer process in `mode` on `schema`, its stdin and stdout piped.
    fn spawn(mode: &str, schema: &str) -> Writer {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "writer_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(MODE_ENV, mode)
            .env(CONNECTION_ENV, server().connection_string())
            .env(SCHEMA_ENV, schema)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        // A thread of its own, not the runtime's blocking pool: the runtime never waits for
        // it. It reads to the end, so the harness in the writer never writes into a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Writer { child, lines }
    }

    /// Waits until the writer printed `marker`; false if its output ended first. (The harness
    /// prints the test's name on the same line as the first, hence `contains`.)
    async fn printed(&mut self, marker: &str) -> bool {
        tokio::time::timeout(GUARD, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(marker) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or_else(|_| panic!("the writer never printed {marker}"))
    }

    /// Lets the writer append the rest.
    fn go_ahead(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go").expect("write to the writer");
        stdin.flush().expect("flush");
    }

    /// Waits for the writer to end; its exit status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(GUARD, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("wait for the writer") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the writer never exited")
    }
}

/// The writer's events from version `from` on, in order, from a subscription; fails if they do
/// not all come.
async fn events_from(
    live: &mut futures::stream::BoxStream<'static, annals::Result<RecordedEvent>>,
    from: u64,
    what: &str,
) {
    let events = tokio::time::timeout(GUARD, async {
        let mut events = Vec::new();
        for _ in from..=EVENTS {
            events.push(live.next().await.expect("stream ended").expect("event"));
        }
        events
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
    for (n, e) in (from..=EVENTS).zip(&events) {
        assert_eq!(e.stream_id.as_str(), "child-1");
        assert_eq!(e.version.get(), n);
        assert_eq!(e.event_type, "Written");
    }
}

/// A store of this process on `schema`, initialised, that polls every 20 ms while it cannot
/// rely on notifications, with the given fallback poll interval.
async fn reader(prefix: &str, fallback: Duration) -> PgEventStore {
    support::init(
        PgEventStore::builder()
            .connection_string(server().connection_string())
            .schema(support::fresh_schema(prefix))
            .poll_interval(Duration::from_millis(20))
            .fallback_poll_interval(fallback),
    )
    .await
}

/// Waits for the writer's first append and its notification, then subscribes on `reader` once
/// its store has signalled that event, and lets the writer append the others. The returned
/// subscription has read the first event and has no wake-up owed for it: only something new
/// wakes it.
async fn settle_on_the_first_event(
    reader: &PgEventStore,
    writer: &mut Writer,
    notifications: &mut tokio::sync::watch::Receiver<usize>,
) -> futures::stream::BoxStream<'static, annals::Result<RecordedEvent>> {
    assert!(writer.printed(FIRST).await, "the writer failed");
    wait_for_count(notifications, 1, "the first append was never announced").await;
    let stream = StreamId::new("child-1").expect("id");
    let first = reader
        .read_stream(&stream, ReadStream::forward())
        .next()
        .await
        .expect("the first event")
        .expect("read");
    wait_signalled(reader, first.position).await;
    let mut live = subscribe_all(reader.clone(), Position::START, Filter::all());
    let event = tokio::time::timeout(GUARD, live.next())
        .await
        .expect("the first event never came")
        .expect("stream ended")
        .expect("event");
    assert_eq!(event.version.get(), 1);
    writer.go_ahead();
    live
}

/// A writer process appends, closes its store and exits at once; a subscriber here, following
/// along, receives all its events. Neither the writer's background task (notifying once an
/// hour) nor the reader (no fallback poll) wakes it: only the notification `close` sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_process_that_closes_and_exits_leaves_no_subscriber_waiting() {
    let _alone = support::alone().await;
    let reader = reader("exit", NEVER).await;
    let (_listener, mut notifications) =
        count_notifications(&format!("annals_{}", reader.schema())).await;
    let mut writer = Writer::spawn(CLOSE, reader.schema());
    let mut live = settle_on_the_first_event(&reader, &mut writer, &mut notifications).await;

    assert!(writer.printed(APPENDED).await, "the writer failed");
    let status = writer.exited().await;
    assert!(status.success(), "the writer failed: {status}");
    wait_for_count(
        &mut notifications,
        2,
        "the writer exited without sending the notification it owed",
    )
    .await;
    events_from(
        &mut live,
        2,
        "the subscriber stalled after the writer process closed its store and exited",
    )
    .await;
}

/// A writer process is killed with SIGKILL as soon as its appends have returned, owing the
/// notification for all but its first: no `close`, no background notification. A subscriber
/// here, following along, still receives every acknowledged event, woken by its fallback poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_process_killed_before_it_notified_leaves_no_subscriber_waiting() {
    let _alone = support::alone().await;
    let reader = reader("killed", Duration::from_millis(200)).await;
    let (_listener, mut notifications) =
        count_notifications(&format!("annals_{}", reader.schema())).await;
    let mut writer = Writer::spawn(KILL, reader.schema());
    let mut live = settle_on_the_first_event(&reader, &mut writer, &mut notifications).await;

    assert!(writer.printed(APPENDED).await, "the writer failed");
    // `Child::kill` is SIGKILL on Unix.
    writer.child.kill().expect("SIGKILL the writer");
    let status = writer.exited().await;
    assert!(!status.success(), "the writer was not killed: {status}");
    events_from(
        &mut live,
        2,
        "the subscriber stalled after the writer process was killed before it notified",
    )
    .await;
    assert_eq!(
        *notifications.borrow(),
        1,
        "a notification came after all: the test proved nothing"
    );
}
