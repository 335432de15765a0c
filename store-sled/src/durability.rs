//! When an append is answered, relative to the disk.

/// When an append is answered, relative to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Durability {
    /// An append is answered after its events reached the disk (`fsync`). A crash, even of the
    /// whole machine, loses no acknowledged event. Appends that arrive while a flush runs share
    /// the next one (group commit), so concurrent writers pay for far fewer flushes than appends.
    ///
    /// Readers (reads, [`subscribe_all`](annals::subscribe_all)) only ever see flushed events,
    /// so nothing a reader has seen can vanish in a crash.
    #[default]
    Flush,
    /// An append is answered after its events are written in memory; the store flushes on a
    /// timer (see [`SledEventStoreBuilder::flush_interval`](crate::SledEventStoreBuilder::flush_interval))
    /// and on close. A crash of the process or machine may lose the events of the last interval
    /// — whole appends only, never part of one, and never anything before a flushed append.
    /// Readers see events as soon as they are answered, so after such a crash a position a
    /// reader saw may be given to another event.
    Buffered,
}
