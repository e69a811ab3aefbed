//! The harness crate's error type: what can fail when running a local cluster of `chordkv node`
//! processes or its network namespaces.
//!
//! Every variant's message is complete for a person (what failed, on what address or URL,
//! and why, in words rather than OS error numbers); `source()` keeps the underlying error
//! where there is one. The `chordkv` binary prints it as it is.

/// What failed, in the harness. See the module docs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed (`what`: what it was doing).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A network namespace, the bridge or a partition could not be made or changed
    /// ([`crate::netns`]: not root, no `ip`, a command that failed; the message says which).
    #[error("{0}")]
    Network(String),
    /// A partition's groups are not two or more disjoint, non-empty groups of existing nodes.
    #[error("{0}")]
    InvalidPartition(String),
    /// A local cluster of `chordkv node` processes ([`crate::cluster`]) or another
    /// [`crate::cluster::NodeControl`] could not do what was asked: a node that did not start,
    /// is not running, does not exist, a ring that did not converge (the message says which).
    #[error("{0}")]
    Cluster(String),
    /// A client request the cluster launcher made failed.
    #[error(transparent)]
    Client(#[from] chordkv_client::ClientError),
}

impl Error {
    /// An [`Error::Io`] for `what` (a closure for `map_err`).
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { what, source }
    }

    /// This error with `context` before its message, as a [`Error::Network`] (for a step of a
    /// namespace operation that failed inside a larger one).
    pub(crate) fn network_context(self, context: impl std::fmt::Display) -> Error {
        Error::Network(format!("{context}: {self}"))
    }
}

/// A `Result` with the harness' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
