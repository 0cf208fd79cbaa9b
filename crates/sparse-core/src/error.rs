//! The one error type of the numeric core: every failure names what was wrong,
//! with the shape expected and the shape found where shapes are involved.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the numeric core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An array had the wrong shape for the operation.
    #[error("{what}: expected shape {expected}, found {found}")]
    Shape {
        /// Which array (e.g. "dictionary", "data.npy").
        what: String,
        /// The expected shape, written like `(n, 8)`.
        expected: String,
        /// The shape actually found.
        found: String,
    },
    /// A parameter is outside its valid range.
    #[error("invalid parameter {name} = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name as the user spells it (e.g. "lambda", "k").
        name: String,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An array holds NaN or infinity.
    #[error("{what} contains a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        /// Which array.
        what: String,
        /// Row of the first bad value.
        row: usize,
        /// Column of the first bad value.
        col: usize,
        /// The value found (NaN, inf or -inf).
        value: f32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but is not a valid array file of the kind expected.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric routine failed (e.g. a solver diverged).
    #[error("numerical failure in {what}: {reason}")]
    Numerical {
        /// The routine.
        what: String,
        /// What happened.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidParameter`].
    pub fn invalid(name: &str, value: impl std::fmt::Display, reason: &str) -> Self {
        Error::InvalidParameter {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(
        what: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}
