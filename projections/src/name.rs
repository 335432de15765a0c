use std::fmt;

use annals::StreamId;

use crate::ProjectionError;

/// A projection's name: stable (its checkpoints, parked events and status are kept under it),
/// and valid by the same rules as a [`StreamId`] (1 to 255 bytes of UTF-8 without control
/// characters).
///
/// ```
/// use annals_projections::ProjectionName;
///
/// let name = ProjectionName::new("balances")?;
/// assert_eq!(name.as_str(), "balances");
/// assert!(ProjectionName::new("").is_err());
/// # Ok::<(), annals_projections::ProjectionError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectionName(String);

impl ProjectionName {
    /// Checks and wraps `name`.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::InvalidName`] saying what is wrong.
    pub fn new(name: impl Into<String>) -> Result<Self, ProjectionError> {
        let name = name.into();
        match StreamId::new(name.as_str()) {
            Ok(_) => Ok(ProjectionName(name)),
            Err(annals::Error::InvalidStreamId { reason, .. }) => {
                Err(ProjectionError::InvalidName {
                    name: name.chars().take(300).collect(),
                    reason,
                })
            }
            Err(_) => Err(ProjectionError::InvalidName {
                name: name.chars().take(300).collect(),
                reason: "not a valid name",
            }),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProjectionName({:?})", self.0)
    }
}

impl AsRef<str> for ProjectionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
