//! Blocking work (a synchronous storage engine's calls) from async code.

use crate::{Error, Result};

/// Runs `work`, blocking calls into a synchronous engine, where it holds no async worker:
///
/// - on a multi-thread runtime, in place inside [`block_in_place`](tokio::task::block_in_place):
///   the worker's other tasks move to another thread meanwhile, and the work costs no hand-off
///   to another thread (its allocations are freed where they were made; a hand-off to the
///   blocking pool per page cut the rate of long sled reads by a third or more, measured);
/// - on a current-thread runtime, on the blocking pool
///   ([`spawn_blocking`](tokio::task::spawn_blocking)), so the runtime's only thread keeps
///   running its other tasks;
/// - outside a tokio runtime, in place.
///
/// Known limit: a current-thread runtime that has *entered* a multi-thread runtime's handle is
/// taken for the multi-thread runtime, and `block_in_place` then panics; run from a task of the
/// runtime you entered in that setup.
///
/// # Errors
///
/// [`Error::Backend`] of `backend` when the blocking pool lost the work (the runtime is
/// shutting down, or `work` panicked there).
pub async fn off_worker<T: Send + 'static>(
    backend: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Ok(work());
    };
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        return Ok(tokio::task::block_in_place(work));
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::backend(backend, e))
}
