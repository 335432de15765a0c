//! A small aggregate for the domain tests: a tally that takes tagged additions and
//! withdrawals, and counts every event it folds (so a double-applied event shows).

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use annals::{
    Aggregate, AppendResult, DomainEvent, EventData, EventStore, ExpectedVersion, Limits, Position,
    ReadAll, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StreamId, StreamInfo, Version,
};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub total: u64,
    /// Every event folded, so that applying one twice is visible.
    pub folded: u64,
    /// How often each tag was added.
    pub tags: BTreeMap<u64, u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TallyCommand {
    Add {
        tag: u64,
        n: u64,
    },
    /// Adds `count` events of 1 in one command.
    AddMany {
        count: u64,
    },
    Take {
        n: u64,
    },
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
pub enum TallyEvent {
    Added { tag: u64, n: u64 },
    Taken { n: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    #[error("cannot add zero")]
    Zero,
    #[error("only {total} left, {n} asked")]
    NotEnough { total: u64, n: u64 },
}

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = TallyError;

    fn handle(&self, command: &TallyCommand) -> Result<Vec<TallyEvent>, TallyError> {
        match *command {
            TallyCommand::Add { n: 0, .. } => Err(TallyError::Zero),
            TallyCommand::Add { tag, n } => Ok(vec![TallyEvent::Added { tag, n }]),
            TallyCommand::AddMany { count } => Ok((0..count)
                .map(|i| TallyEvent::Added { tag: i, n: 1 })
                .collect()),
            TallyCommand::Take { n } if n > self.total => Err(TallyError::NotEnough {
                total: self.total,
                n,
            }),
            TallyCommand::Take { n } => Ok(vec![TallyEvent::Taken { n }]),
            TallyCommand::Nothing => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        self.folded += 1;
        match *event {
            TallyEvent::Added { tag, n } => {
                self.total += n;
                *self.tags.entry(tag).or_default() += 1;
            }
            TallyEvent::Taken { n } => self.total -= n,
        }
    }
}

/// The same aggregate after a change of its state's schema: old snapshots must be ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyV2(pub Tally);

impl Aggregate for TallyV2 {
    const TYPE: &'static str = "tally";
    const SNAPSHOT_VERSION: u16 = 2;
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = TallyError;

    fn handle(&self, command: &TallyCommand) -> Result<Vec<TallyEvent>, TallyError> {
        self.0.handle(command)
    }

    fn apply(&mut self, event: &TallyEvent) {
        self.0.apply(event);
    }
}

/// The in-memory store whose snapshot writes always fail, to show that they never fail a
/// command.
#[derive(Clone, Debug, Default)]
pub struct BrokenSnapshots(pub annals::InMemoryStore);

impl EventStore for BrokenSnapshots {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> annals::Result<AppendResult> {
        self.0.append(stream, expected, events).await
    }
    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, annals::Result<RecordedEvent>> {
        self.0.read_stream(stream, options)
    }
    fn read_all(&self, options: ReadAll) -> BoxStream<'static, annals::Result<RecordedEvent>> {
        self.0.read_all(options)
    }
    async fn stream_version(&self, stream: &StreamId) -> annals::Result<Version> {
        self.0.stream_version(stream).await
    }
    async fn last_position(&self) -> annals::Result<Option<Position>> {
        self.0.last_position().await
    }
    fn streams(&self) -> BoxStream<'static, annals::Result<StreamInfo>> {
        self.0.streams()
    }
    fn watch_commits(&self) -> annals::CommitWatch {
        self.0.watch_commits()
    }
    fn limits(&self) -> Limits {
        self.0.limits()
    }
    async fn restore(
        &self,
        events: Vec<annals::RestoredEvent>,
    ) -> annals::Result<annals::RestoreResult> {
        self.0.restore(events).await
    }
    async fn close(&self) -> annals::Result<()> {
        self.0.close().await
    }
    async fn verify(&self) -> annals::Result<annals::VerifyReport> {
        self.0.verify().await
    }
}

impl SnapshotStore for BrokenSnapshots {
    async fn save_snapshot(&self, _snapshot: Snapshot) -> annals::Result<()> {
        Err(annals::Error::Unavailable {
            backend: "snapshots",
            source: "the disk is full".into(),
        })
    }
    async fn load_snapshot(&self, stream: &StreamId) -> annals::Result<Option<Snapshot>> {
        self.0.load_snapshot(stream).await
    }
}

pub fn add(tag: u64, n: u64) -> TallyCommand {
    TallyCommand::Add { tag, n }
}
