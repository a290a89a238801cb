//! The error of a refused policy document: the path of the key at fault, and why.

/// Why a policy document was refused. Displays as `path: reason`, for example
/// `routing.rules[2].match.regex: invalid regular expression ...`; the path is `.` when the
/// fault is the document as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PolicyError {
    path: String,
    reason: String,
}

impl PolicyError {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The path of the offending key, e.g. `sampling.rules[0].probability` (`.` for the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it, and what would be accepted.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
