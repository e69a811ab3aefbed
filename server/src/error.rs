//! The server crate's error type, for what can fail outside the Chord core (which has no
//! errors, only replies): opening a store, running the server.
//!
//! Every variant's message is complete for a person (what failed, on what address or URL,
//! and why, in words rather than OS error numbers); `source()` keeps the underlying error
//! where there is one. The `chordkv` binary prints it as it is.

use std::net::SocketAddr;

/// What failed, in the server. See the module docs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store URL that is neither `memory` nor `redis://HOST:PORT/DB` (the message quotes it).
    #[error("invalid store URL '{url}': {reason}")]
    InvalidStore { url: String, reason: String },
    /// A Redis store could not be opened: unreachable, refusing our scripts, or holding data
    /// we cannot read. `url` is shown without credentials; `message` says what failed, with it.
    #[error("{message}")]
    StoreUnavailable { url: String, message: String },
    /// A Redis whose configuration could remove or roll back the store's data without the
    /// store noticing (it evicts any key when full, or reloads a snapshot when it restarts):
    /// the message names the setting and the one to use instead.
    #[error("{message}")]
    UnsafeStore { url: String, message: String },
    /// The keyring file (`--keyring`) cannot be read or holds something other than base64
    /// 32-byte keys.
    #[error("keyring {path}: {reason}")]
    Keyring { path: String, reason: String },
    /// The users file (`--users`) cannot be read or does not parse.
    #[error("users file {path}: {reason}")]
    Users { path: String, reason: String },
    /// The TLS certificate, key or CA file cannot be read or used (the message names it).
    #[error("TLS: {0}")]
    Tls(String),
    /// Options that cannot run together (the message says which, and what to do).
    #[error("{0}")]
    Config(String),
    /// The node cannot listen on `addr` (in use, not on this host, not permitted).
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    /// An operating-system call the server needs failed (`what`: what it was doing).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The node's thread panicked (a bug: the core must not panic on any input).
    #[error("the node thread panicked")]
    Panicked,
}

impl Error {
    /// Whether the store failed (an invalid URL, a Redis that cannot be opened) rather than
    /// the node itself (listening, the OS, a panic).
    pub fn is_store(&self) -> bool {
        matches!(
            self,
            Error::InvalidStore { .. } | Error::StoreUnavailable { .. } | Error::UnsafeStore { .. }
        )
    }

    /// An [`Error::Io`] for `what` (a closure for `map_err`).
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

/// A `Result` with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
