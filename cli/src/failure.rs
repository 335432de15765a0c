//! How the CLI fails: a one-line message and an exit code.

use std::fmt;
use std::process::ExitCode;

/// A failed command: what went wrong, where, and the exit code it earns.
///
/// Exit codes: 1 when a problem was found (`verify`) or the thing asked for does not exist;
/// 2 for usage and connection errors.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

/// `Result` with [`Failure`].
pub type CliResult<T = ()> = Result<T, Failure>;

impl Failure {
    /// Something asked for does not exist, or a check found a problem (exit 1).
    pub fn not_found(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// A check found problems (exit 1).
    pub fn problems(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// Bad usage or a store that cannot be reached (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// The exit code.
    pub fn code(&self) -> u8 {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// As a process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }

    /// Adds where the failure happened in front of the message.
    #[must_use]
    pub fn context(mut self, place: impl fmt::Display) -> Self {
        self.message = format!("{place}: {}", self.message);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<annals::Error> for Failure {
    fn from(error: annals::Error) -> Self {
        use annals::Error as E;
        let code = match &error {
            E::Unavailable { .. }
            | E::Timeout { .. }
            | E::Configuration { .. }
            | E::NotInitialized { .. }
            | E::Format { .. }
            | E::InvalidStreamId { .. } => 2,
            _ => 1,
        };
        Failure {
            code,
            message: one_line(&error),
        }
    }
}

impl From<annals_projections::ProjectionError> for Failure {
    fn from(error: annals_projections::ProjectionError) -> Self {
        use annals_projections::ProjectionError as E;
        match error {
            E::Store(error) => Failure::from(error),
            E::InvalidName { .. }
            | E::Configuration { .. }
            | E::DuplicateName(_)
            | E::NewerFormat { .. } => Failure::usage(one_line(&error)),
            // Not parked, a handler's failure, a model ahead of the log, a lost partition.
            _ => Failure::problems(one_line(&error)),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::usage(one_line(&error))
    }
}

/// An error and its sources on one line: `outer: cause: root cause`.
pub(crate) fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}
