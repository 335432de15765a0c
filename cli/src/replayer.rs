//! The [`Replayer`] of any [`Aggregate`].

use std::marker::PhantomData;

use annals::codec::{Bincode, Json};
use annals::{Aggregate, AnyStore, DomainEvent, RecordedEvent, Repository, StreamId, Version};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;

use crate::failure::{CliResult, Failure};
use crate::registry::{ReplayPoint, ReplayedChanges, ReplayedState, Replayer};

/// Replays streams of the aggregate `A` through a [`Repository`] on the CLI's store.
pub struct AggregateReplayer<A> {
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> std::fmt::Debug for AggregateReplayer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateReplayer")
            .field("type", &std::any::type_name::<A>())
            .finish()
    }
}

impl<A> Default for AggregateReplayer<A> {
    fn default() -> Self {
        AggregateReplayer {
            _aggregate: PhantomData,
        }
    }
}

impl<A> AggregateReplayer<A> {
    /// A replayer for `A`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<A> Replayer for AggregateReplayer<A>
where
    A: Aggregate,
{
    fn category(&self) -> &str {
        A::TYPE
    }

    fn replay<'a>(
        &'a self,
        store: &'a AnyStore,
        stream: &'a StreamId,
        point: ReplayPoint,
    ) -> BoxFuture<'a, CliResult<ReplayedState>> {
        async move {
            let id = id_of::<A>(stream)?;
            let repository: Repository<A, AnyStore> = Repository::new(store.clone());
            let loaded = match point {
                ReplayPoint::Latest => repository.load(id).await,
                ReplayPoint::Version(v) => repository.load_at(id, v).await,
                ReplayPoint::AsOf(t) => repository.load_as_of(id, t).await,
            }?;
            Ok(ReplayedState {
                version: loaded.version,
                state: state_json(stream, &loaded.state)?,
            })
        }
        .boxed()
    }

    fn changes<'a>(
        &'a self,
        store: &'a AnyStore,
        stream: &'a StreamId,
        from: Version,
        to: Version,
    ) -> BoxFuture<'a, CliResult<ReplayedChanges>> {
        async move {
            let id = id_of::<A>(stream)?;
            let repository: Repository<A, AnyStore> = Repository::new(store.clone());
            let changes = repository.changes(id, from, to).await?;
            Ok(ReplayedChanges {
                before: state_json(stream, &changes.before)?,
                after: state_json(stream, &changes.after)?,
                events: changes
                    .events
                    .iter()
                    .map(|e| (e.version, e.event.event_type().to_owned(), e.recorded_at))
                    .collect(),
            })
        }
        .boxed()
    }

    fn decode_event(&self, event: &RecordedEvent) -> Option<Value> {
        let decoded = match event.content_type.as_str() {
            annals::CONTENT_TYPE_JSON => A::Event::decode(&Json, &event.event_type, &event.payload),
            annals::CONTENT_TYPE_BINCODE => {
                A::Event::decode(&Bincode, &event.event_type, &event.payload)
            }
            _ => return None,
        }
        .ok()?;
        // The event as its own serde form shows it; the variant's payload is what users know.
        match serde_json::to_value(&decoded).ok()? {
            Value::Object(map) if map.len() == 1 => map.into_iter().next().map(|(_, v)| v),
            other => Some(other),
        }
    }
}

/// The aggregate id of `stream`: the text after `<TYPE>-`.
fn id_of<A: Aggregate>(stream: &StreamId) -> CliResult<&str> {
    stream
        .as_str()
        .strip_prefix(A::TYPE)
        .and_then(|rest| rest.strip_prefix('-'))
        .ok_or_else(|| {
            Failure::usage(format!(
                "stream `{stream}` is not of category `{}`",
                A::TYPE
            ))
        })
}

/// An aggregate state as JSON.
fn state_json<A: Aggregate>(stream: &StreamId, state: &A) -> CliResult<Value> {
    serde_json::to_value(state)
        .map_err(|e| Failure::problems(format!("cannot show the state of `{stream}` as JSON: {e}")))
}
