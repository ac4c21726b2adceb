//! Configuration errors: what is wrong with one object, and where it came from.

use std::fmt;
use std::path::PathBuf;

use crate::model::ObjectKey;

/// What is wrong with one document or object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The file cannot be read.
    #[error("cannot read: {source}")]
    Io {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The document is not YAML.
    #[error("not valid YAML: {source}")]
    Yaml {
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A field every object needs is missing or empty.
    #[error("{field}: required")]
    Missing {
        /// The field, e.g. `metadata.name`.
        field: &'static str,
    },
    /// An `apiVersion`/`kind` pair in a group we own (Istio security, Gateway API) that we do
    /// not support: rejected rather than ignored, since it may carry policy.
    #[error("{api_version} {kind} is not supported")]
    UnsupportedKind {
        /// The `apiVersion`.
        api_version: String,
        /// The `kind`.
        kind: String,
    },
    /// The object does not have the kind's shape: the message names the field path
    /// (`spec.rules[0].from[0].source: unknown field ...`).
    #[error("{source}")]
    Schema {
        /// The deserializer's error, with the field path.
        #[source]
        source: serde_yaml::Error,
    },
    /// A field has a value we cannot accept.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field path, e.g. `spec.rules[0].to[0].operation.ports[1]`.
        field: String,
        /// Why.
        reason: String,
    },
    /// Another document already defined this object; the first one wins.
    #[error("duplicate object: already defined in {first}")]
    Duplicate {
        /// Where the first definition is.
        first: String,
    },
}

/// One bad document or object, located in the sources.
#[derive(Debug, thiserror::Error)]
#[error("{location}{}: {error}", object_suffix(.object))]
pub struct ConfigError {
    /// Where it is.
    pub location: Location,
    /// Which object, when the document got far enough to say.
    pub object: Option<ObjectKey>,
    /// What is wrong.
    #[source]
    pub error: ObjectError,
}

fn object_suffix(o: &Option<ObjectKey>) -> String {
    o.as_ref().map(|k| format!(" ({k})")).unwrap_or_default()
}

/// A document in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// The document's position in the file, counting from 1 (as `---` separators count).
    pub document: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file.display(), self.document)
    }
}

/// Something translation had to leave out or change (an L7 rule ztunnel cannot enforce, a
/// waypoint that does not exist); the affected object is still translated, fail-closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The object the warning is about.
    pub object: ObjectKey,
    /// What happened.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}
