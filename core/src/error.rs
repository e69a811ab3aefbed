//! The core's error type. The Chord state machine itself has no errors, only replies; what
//! fails in this crate is a store operation (the [`crate::store::Store`] contract, where the
//! type is also named [`crate::store::StoreError`]) and a set of node options that cannot run
//! together ([`crate::options::NodeOptions::chord_config`]).

/// What failed, in the core. Messages are complete for a person.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The backing service cannot be reached or failed; retrying later may work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store holds data it cannot read back (e.g. a foreign key in a shared Redis).
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// The store lost data it held (e.g. Redis restarted without persistence): this operation
    /// did not run, and the store may now answer without entries it had, so its answers are
    /// not to be trusted until the caller has refilled it. See
    /// [`crate::store::Store::loss_epoch`].
    #[error("storage lost its data: {0}")]
    Lost(String),
    /// Node options that cannot run together or are out of range; the message names the flags
    /// to change (`--replicas 3 needs a longer successor list: ...`).
    #[error("{0}")]
    InvalidOptions(String),
}

impl Error {
    /// Whether the same operation may succeed later. Not after [`Error::Lost`]: it would, but
    /// from a store that misses entries; not for invalid options.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// Whether the store reported that it lost data it held ([`Error::Lost`]).
    pub fn is_data_loss(&self) -> bool {
        matches!(self, Error::Lost(_))
    }
}

/// A `Result` with the core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
