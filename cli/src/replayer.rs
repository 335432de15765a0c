//! The [`Replayer`] of any [`Aggregate`].

use std::marker::PhantomData;

use annals::codec::{Bincode, Json};
use annals::{Aggregate, AnyStore, DomainEvent, RecordedEvent, Repository, StreamId};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;

use crate::failure::{CliResult, Failure};
use crate::registry::{ReplayPoint, ReplayedState, Replayer};

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
            let id = stream
                .as_str()
                .strip_prefix(A::TYPE)
                .and_then(|rest| rest.strip_prefix('-'))
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "stream `{stream}` is not of category `{}`",
                        A::TYPE
                    ))
                })?;
            let repository: Repository<A, AnyStore> = Repository::new(store.clone());
            let loaded = match point {
                ReplayPoint::Latest => repository.load(id).await,
                ReplayPoint::Version(v) => repository.load_at(id, v).await,
                ReplayPoint::AsOf(t) => repository.load_as_of(id, t).await,
            }?;
            let state = serde_json::to_value(&loaded.state).map_err(|e| {
                Failure::problems(format!("cannot show the state of `{stream}` as JSON: {e}"))
            })?;
            Ok(ReplayedState {
                version: loaded.version,
                state,
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
