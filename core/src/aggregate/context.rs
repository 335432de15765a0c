use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{EventId, Metadata, Timestamp};

/// What travels with a command besides the command itself: its id, the conversation it belongs
/// to, and headers for every event it causes.
///
/// - With a **command id**, the command is idempotent: its events get ids derived from it
///   ([`EventId::derived`]), so executing it again (a retry after a timeout) never records its
///   events twice and returns the first execution's events. The command id is also each
///   event's `causation_id`.
/// - The **correlation id** ties together everything caused by one original request; when it
///   is not set, the command id (if any) starts a new conversation.
/// - **Headers** (user, tenant, trace context…) are copied into every event's metadata.
///
/// ```
/// use annals::CommandContext;
/// use uuid::Uuid;
///
/// let request = Uuid::now_v7();
/// let context = CommandContext::new()
///     .with_command_id(Uuid::now_v7())
///     .with_correlation_id(request)
///     .with_header("user", "ada");
/// assert_eq!(context.correlation_id(), Some(request));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandContext {
    command_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    headers: BTreeMap<String, String>,
}

impl CommandContext {
    /// A context without ids or headers: events get fresh ids, no causation and no correlation.
    pub fn new() -> Self {
        CommandContext::default()
    }

    /// A context for the idempotent command `command_id`.
    pub fn command(command_id: Uuid) -> Self {
        CommandContext::new().with_command_id(command_id)
    }

    /// Sets the command id, which makes the command idempotent and becomes each event's
    /// causation id.
    #[must_use]
    pub fn with_command_id(mut self, command_id: Uuid) -> Self {
        self.command_id = Some(command_id);
        self
    }

    /// Sets the correlation id carried into every event.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Adds a header carried into every event.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// The command id, if any.
    pub fn command_id(&self) -> Option<Uuid> {
        self.command_id
    }

    /// The correlation id events will carry: the one set, else the command id.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.correlation_id.or(self.command_id)
    }

    /// The headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// The id of the `index`-th event emitted under this context: derived from the command id
    /// when there is one, fresh otherwise.
    pub fn event_id(&self, index: u32) -> EventId {
        match self.command_id {
            Some(command) => EventId::derived(command, index),
            None => EventId::new(),
        }
    }

    /// The metadata of events emitted under this context at `timestamp`.
    pub fn metadata(&self, timestamp: Timestamp) -> Metadata {
        Metadata {
            correlation_id: self.correlation_id(),
            causation_id: self.command_id,
            timestamp,
            headers: self.headers.clone(),
        }
    }
}
