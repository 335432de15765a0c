//! Reads: one stream and the global log in pages (each page one query, started as soon as the
//! page before it arrived, from that page's last event, so it runs while the reader consumes
//! that page: [`paged_ahead`]), and the small reads (last position, the stream listing).

use std::sync::Arc;
use std::time::Instant;

use annals::store::kit::{paged_ahead, Page};
use annals::{
    Direction, Position, ReadAll, ReadStream, RecordPlace, RecordedEvent, Result, StreamId,
    StreamInfo,
};
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use tokio_postgres::types::ToSql;

use super::{rows, PgEventStore};
use crate::error::map;
use crate::types::Xid8;

/// Where the next page of a stream read starts, and how many events the read may still yield.
struct StreamCursor {
    from: i64,
    remaining: usize,
}

/// Where the next page of a global read starts (`(transaction id, seq)`), and how many events
/// the read may still yield.
struct GlobalCursor {
    xid: u64,
    seq: i64,
    remaining: usize,
}

impl PgEventStore {
    /// The pages of a stream read, unspanned.
    pub(super) fn read_stream_pages(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let forward = options.direction == Direction::Forward;
        let start = if forward {
            options.from.get().max(1)
        } else {
            options.from.get()
        };
        // Versions are bigint: a start past i64::MAX reads forward nothing, backward everything.
        let start = match (i64::try_from(start), forward) {
            (Ok(v), _) => Some(v),
            (Err(_), true) => None,
            (Err(_), false) => Some(i64::MAX),
        }
        .filter(|&v| v >= 1 && options.limit > 0);
        let first = start.map(|from| StreamCursor {
            from,
            remaining: options.limit,
        });
        let store = self.clone();
        let stream = stream.clone();
        paged_ahead(first, move |cursor: StreamCursor| {
            let store = store.clone();
            let stream = stream.clone();
            async move {
                let inner = &store.inner;
                let page = inner.page_size.min(cursor.remaining);
                let sql = if forward {
                    &inner.sql.read_stream_forward
                } else {
                    &inner.sql.read_stream_backward
                };
                let events = store
                    .query_events(
                        sql,
                        &[&stream.as_str(), &cursor.from, &limit_param(page)],
                        |row| rows::stream_event(row, &stream),
                    )
                    .await?;
                if let Some(head) = events
                    .iter()
                    .filter_map(|e| e.as_ref().ok())
                    .max_by_key(|e| e.version)
                {
                    inner
                        .heads
                        .saw_at(&stream, head.version.get(), head.recorded_at);
                }
                let next = match events.last() {
                    Some(Ok(last)) if events.len() == page => {
                        let v = i64::try_from(last.version.get()).ok();
                        let from = if forward {
                            v.and_then(|v| v.checked_add(1))
                        } else {
                            v.map(|v| v - 1).filter(|&v| v >= 1)
                        };
                        from.map(|from| StreamCursor {
                            from,
                            remaining: cursor.remaining - page,
                        })
                    }
                    _ => None,
                }
                .filter(|next| next.remaining > 0);
                Ok(Page {
                    items: events,
                    next,
                })
            }
        })
    }

    /// The pages of a global read, unspanned.
    pub(super) fn read_all_pages(
        &self,
        options: ReadAll,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let categories = Arc::new(options.filter.categories);
        let event_types = Arc::new(options.filter.event_types);
        let limit = options.limit;
        let first = global_key(options.from)
            .filter(|_| limit > 0)
            .map(|(xid, seq)| GlobalCursor {
                xid,
                seq,
                remaining: limit,
            });
        let store = self.clone();
        paged_ahead(first, move |cursor: GlobalCursor| {
            let store = store.clone();
            let categories = categories.clone();
            let event_types = event_types.clone();
            async move {
                let inner = &store.inner;
                let page = inner.page_size.min(cursor.remaining);
                let started = Instant::now();
                let events = store
                    .query_events(
                        &inner.sql.read_all,
                        &[
                            &Xid8(cursor.xid),
                            &cursor.seq,
                            &*categories,
                            &*event_types,
                            &limit_param(page),
                        ],
                        rows::event,
                    )
                    .await?;
                tracing::trace!(
                    from.commit = cursor.xid,
                    from.prepare = cursor.seq,
                    count = events.len(),
                    duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "read_all page"
                );
                let next = match events.last() {
                    Some(Ok(last)) if events.len() == page => {
                        global_key(last.position.next()).map(|(xid, seq)| GlobalCursor {
                            xid,
                            seq,
                            remaining: cursor.remaining - page,
                        })
                    }
                    _ => None,
                }
                .filter(|next| next.remaining > 0);
                Ok(Page {
                    items: events,
                    next,
                })
            }
        })
    }

    /// Runs one read query on a pooled connection and decodes its rows (a row that does not
    /// decode is its page's last item: the read ends there).
    async fn query_events(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        decode: impl Fn(&tokio_postgres::Row) -> Result<RecordedEvent>,
    ) -> Result<Vec<Result<RecordedEvent>>> {
        let schema = &self.inner.schema;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| map(e, schema))?;
        let found = client
            .query(&statement, params)
            .await
            .map_err(|e| map(e, schema))?;
        Ok(found.iter().map(decode).collect())
    }

    /// The last position a reader of the global log can see.
    pub(super) async fn last_visible(&self) -> Result<Option<Position>> {
        let schema = &self.inner.schema;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.last_position)
            .await
            .map_err(|e| map(e, schema))?;
        let row = client
            .query_opt(&statement, &[])
            .await
            .map_err(|e| map(e, schema))?;
        row.map(|row| {
            let place = RecordPlace::new();
            rows::position(
                rows::get(&row, 0, &place)?,
                rows::get(&row, 1, &place)?,
                &place,
            )
        })
        .transpose()
    }

    /// Every stream with its head, in stream id (byte) order.
    pub(super) fn list_streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        let store = self.clone();
        stream::once(async move {
            let inner = &store.inner;
            let client = store.client().await?;
            let found = client
                .query(&inner.sql.streams, &[])
                .await
                .map_err(|e| map(e, &inner.schema))?;
            let mut infos = found
                .iter()
                .map(rows::stream_info)
                .collect::<Result<Vec<StreamInfo>>>()?;
            // Stream ids order by bytes, whatever the database's collation.
            infos.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
            Ok(infos)
        })
        .flat_map(|listed| match listed {
            Ok(infos) => stream::iter(infos.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .boxed()
    }
}

/// Where a global read starts, as `(transaction id, seq)`, or `None` when nothing can follow.
fn global_key(from: Position) -> Option<(u64, i64)> {
    match i64::try_from(from.prepare()) {
        Ok(seq) => Some((from.commit(), seq)),
        // No seq is that large: start at the next transaction.
        Err(_) => from.commit().checked_add(1).map(|c| (c, 0)),
    }
}

/// A page size as a `LIMIT` parameter.
fn limit_param(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
