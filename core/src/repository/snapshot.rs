//! Snapshots: reading the stream's snapshot when it is usable, and saving new ones.

use std::fmt;
use std::future::Future;

use super::Repository;
use crate::codec::Codec;
use crate::{Aggregate, Error, EventStore, Snapshot, SnapshotStore, StreamId, Timestamp, Version};

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
    C: Codec,
{
    /// The aggregate's saved snapshot, decoded, with its version: `None` when there is none
    /// or it has another [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION). For checking
    /// snapshots against a replay of the log ([`load_at`](Self::load_at) its version).
    ///
    /// # Errors
    ///
    /// The store's errors; [`Error::Codec`] or [`Error::UnknownContentType`] when the
    /// snapshot cannot be decoded.
    pub fn snapshot(
        &self,
        id: impl fmt::Display,
    ) -> impl Future<Output = Result<Option<(Version, A)>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move {
            let stream = stream?;
            match self.inner.store.load_snapshot(&stream).await? {
                Some(snapshot) if snapshot.schema_version == A::SNAPSHOT_VERSION => {
                    let state = self.inner.codecs.decode(
                        &snapshot.content_type,
                        A::TYPE,
                        &snapshot.payload,
                    )?;
                    Ok(Some((snapshot.version, state)))
                }
                _ => Ok(None),
            }
        }
    }

    /// Loads the aggregate `id` and saves its current state as a snapshot now, whatever the
    /// [`SnapshotPolicy`](super::SnapshotPolicy): the version snapshotted, or `None` for an
    /// aggregate without events.
    ///
    /// Unlike the snapshots the policy takes during commands, a failure here is returned.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load); [`Error::Codec`] when the state cannot be encoded; the store's
    /// error when the snapshot cannot be saved.
    pub fn take_snapshot(
        &self,
        id: impl fmt::Display,
    ) -> impl Future<Output = Result<Option<Version>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move {
            let stream = stream?;
            let loaded = self.load_current(&stream).await?;
            if loaded.version.is_empty() {
                return Ok(None);
            }
            let codec = &self.inner.codecs.writer;
            let payload = codec.encode(&loaded.state).map_err(|source| Error::Codec {
                content_type: codec.content_type().to_owned(),
                event_type: A::TYPE.to_owned(),
                source,
            })?;
            self.inner
                .store
                .save_snapshot(Snapshot {
                    stream_id: stream.clone(),
                    version: loaded.version,
                    schema_version: A::SNAPSHOT_VERSION,
                    content_type: codec.content_type().to_owned(),
                    payload: payload.into(),
                    taken_at: Timestamp::now(),
                })
                .await?;
            Ok(Some(loaded.version))
        }
    }

    /// The stream's snapshot if it has the current schema version and decodes; otherwise
    /// `None`, with a log line saying why.
    pub(super) async fn usable_snapshot(&self, stream: &StreamId) -> Option<(Version, A)> {
        // Snapshots are read whatever the policy: one saved under another configuration is as
        // valid a fold of the stream.
        let snapshot: Snapshot = match self.inner.store.load_snapshot(stream).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "cannot load the snapshot; replaying the stream");
                return None;
            }
        };
        if snapshot.schema_version != A::SNAPSHOT_VERSION {
            tracing::info!(
                stream = %stream,
                snapshot_schema = snapshot.schema_version,
                current_schema = A::SNAPSHOT_VERSION,
                "ignoring a snapshot of another state schema version; replaying the stream"
            );
            return None;
        }
        match self
            .inner
            .codecs
            .decode::<A>(&snapshot.content_type, A::TYPE, &snapshot.payload)
        {
            Ok(state) => Some((snapshot.version, state)),
            Err(e) => {
                tracing::warn!(stream = %stream, version = snapshot.version.get(), error = %e, "cannot decode the snapshot; replaying the stream");
                None
            }
        }
    }

    /// Saves a snapshot of `state` at `version`; failures are logged, never returned.
    pub(super) async fn save_snapshot(&self, stream: &StreamId, version: Version, state: &A) {
        let codec = &self.inner.codecs.writer;
        let payload = match codec.encode(state) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(stream = %stream, version = version.get(), error = %e, "cannot encode a snapshot; the command is not affected");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: stream.clone(),
            version,
            schema_version: A::SNAPSHOT_VERSION,
            content_type: codec.content_type().to_owned(),
            payload: payload.into(),
            taken_at: Timestamp::now(),
        };
        match self.inner.store.save_snapshot(snapshot).await {
            Ok(()) => {
                tracing::debug!(stream = %stream, version = version.get(), "snapshot saved");
            }
            Err(e) => {
                tracing::warn!(stream = %stream, version = version.get(), error = %e, "cannot save a snapshot; the command is not affected");
            }
        }
    }
}
