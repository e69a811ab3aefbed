//! loadgen's error type: what a run, a sweep or a remote cluster could not do.
//!
//! Every message is complete for a person (what failed, with the file, node or trial it
//! concerns, and why); `source()` keeps the underlying error where there is one. The
//! `loadgen` binary prints it as it is.

/// What failed in loadgen. See the module docs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A workload file that cannot be read or parsed, or whose fields are invalid.
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
    /// A workload or a command line that asks for something loadgen cannot do (faults with
    /// `--nodes`, partitions without network namespaces, ...); the message says what.
    #[error("{0}")]
    Invalid(String),
    /// The local cluster (or the node library under it) failed.
    #[error(transparent)]
    Cluster(#[from] chordkv_harness::Error),
    /// A client request loadgen made failed where the run cannot go on without it.
    #[error(transparent)]
    Client(#[from] chordkv_client::ClientError),
    /// A deployed cluster (`--inventory`: ssh, the hosts' control script) failed.
    #[error("{0}")]
    Remote(String),
    /// A file or a socket loadgen needs (`what` names it).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A step of a run or a sweep failed: `context` says which, `source` why.
    #[error("{context}: {source}")]
    Step {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// `source` as the failure of the step `context` (a trial, a file, a phase of a run).
    pub fn step(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Step {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An [`Error::Io`] about `what` (a closure for `map_err`).
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// A `Result` with loadgen's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
