use std::future::Future;

use annals::{BoxError, Filter, RecordedEvent};

use crate::{ProjectionName, ReadModel};

/// A projection: a name, the events it wants, and a handler that writes a batch of them to its
/// read model `M` inside the batch's transaction.
///
/// The runtime calls [`handle`](Self::handle) with events in log order, each stream's events in
/// version order, and commits the handler's writes together with the checkpoint that covers
/// them ([`ReadModel::commit`]): a crash never applies a batch twice and never skips one.
///
/// A handler may be called again with the same events after an error (retries, or one event at
/// a time to find a poison event): only the writes of a committed call count, so handlers that
/// write only through the transaction are applied exactly once. A handler with effects outside
/// the transaction (mail, HTTP, commands) runs **at least once** per event: make it idempotent
/// with the event's [`id`](RecordedEvent::id) or [`position`](RecordedEvent::position), which
/// never change.
///
/// ```
/// use annals::{BoxError, Filter, RecordedEvent};
/// use annals_projections::{MemoryModel, MemoryTx, Projection, ProjectionName};
///
/// /// Events per stream.
/// struct Counts(ProjectionName);
///
/// impl Projection<MemoryModel<String, u64>> for Counts {
///     fn name(&self) -> &ProjectionName {
///         &self.0
///     }
///     fn filter(&self) -> Filter {
///         Filter::all().category("account")
///     }
///     async fn handle(
///         &self,
///         tx: &mut MemoryTx<String, u64>,
///         events: &[RecordedEvent],
///     ) -> Result<(), BoxError> {
///         for event in events {
///             let key = event.stream_id.to_string();
///             let n = tx.get(&key).unwrap_or(0);
///             tx.insert(key, n + 1);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Projection<M: ReadModel>: Send + Sync + 'static {
    /// The projection's stable name.
    fn name(&self) -> &ProjectionName;

    /// The events it wants (all by default). Events it does not want still move its
    /// checkpoint.
    fn filter(&self) -> Filter {
        Filter::all()
    }

    /// Writes `events` (never empty) to the read model through `tx`. An error (or a panic)
    /// rolls the batch back; the runtime retries, then applies the projection's error policy
    /// to the failing event.
    fn handle(
        &self,
        tx: &mut M::Tx,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Prepares a generation of the read model: creates its tables (on PostgreSQL the batch's
    /// `search_path` starts with the generation's schema, so unqualified `CREATE TABLE IF NOT
    /// EXISTS` lands there). Called when a runner starts and when a rebuild begins a
    /// generation, so it must be idempotent. Nothing by default.
    fn setup(&self, tx: &mut M::Tx) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = tx;
        async { Ok(()) }
    }

    /// Creates the generation's secondary indexes (idempotent: `CREATE INDEX IF NOT EXISTS`),
    /// after [`setup`](Self::setup). A runner calls it when it starts; a rebuild calls it once
    /// its new generation has caught up — after the bulk load, which goes faster without
    /// them — and before the swap. Nothing by default.
    fn indexes(&self, tx: &mut M::Tx) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = tx;
        async { Ok(()) }
    }

    /// Whether the projection has effects outside its read model ([`effects`](Self::effects)).
    /// `false` by default; when `true`, each batch of a partition also takes that partition's
    /// effect lock (shared by the projection's generations).
    fn has_effects(&self) -> bool {
        false
    }

    /// Outside effects (mail, HTTP, commands, an outbox row) of `events`, called after
    /// [`handle`](Self::handle) inside the same batch, with only the events whose effects no
    /// generation of the projection has done yet: a rebuild never repeats the effects of
    /// events the live generation handled, and around a swap no event's effect runs twice or
    /// not at all. Called only when [`has_effects`](Self::has_effects) is `true`. An effect
    /// that sends something before its batch commits runs again if the batch fails; writing
    /// an outbox row through `tx` makes it exactly once.
    fn effects(
        &self,
        tx: &mut M::Tx,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (tx, events);
        async { Ok(()) }
    }
}

/// A shared projection is a projection: the workers run one runner per partition they own, all
/// on one projection value.
impl<M: ReadModel, P: Projection<M>> Projection<M> for std::sync::Arc<P> {
    fn name(&self) -> &ProjectionName {
        (**self).name()
    }

    fn filter(&self) -> Filter {
        (**self).filter()
    }

    fn handle(
        &self,
        tx: &mut M::Tx,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).handle(tx, events)
    }

    fn setup(&self, tx: &mut M::Tx) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).setup(tx)
    }

    fn indexes(&self, tx: &mut M::Tx) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).indexes(tx)
    }

    fn has_effects(&self) -> bool {
        (**self).has_effects()
    }

    fn effects(
        &self,
        tx: &mut M::Tx,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).effects(tx, events)
    }
}
