//! One TCP connection of the event loop: its socket, its read buffer, its write buffer.
//!
//! A connection carries frames one way and their replies the other. An *inbound* connection
//! (accepted from a client or a peer) carries requests in and replies out; an *outbound*
//! connection (opened by this node to a peer, one per peer address) carries requests out and
//! replies in. Which way a frame may travel is checked by the loop, not here.
//!
//! Bytes in: [`Conn::read_available`] appends what the socket has to a `BytesMut`, and
//! [`Conn::next_frame`] cuts whole frames off its front, so a frame's keys and values are
//! zero-copy slices of what was read. Bytes out: frames are encoded straight onto the end of
//! one `Vec<u8>` ([`Conn::push_frame`]), and [`Conn::flush`] writes from the front until the
//! socket would block. Both buffers are reused for the connection's whole life.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::BytesMut;
use chordkv_protocol::frame::{check, decode, DecodeError, EncodeError, Frame};
use chordkv_protocol::handshake;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resp::RespSession;
use crate::keyring::Keyring;
use crate::secure::{self, Channel, Initiator, SecureError};
use chordkv_core::chord::Millis;

/// Room reserved in a fresh read buffer (a small request fits many times over).
const INITIAL_READ_BUFFER_BYTES: usize = 4 * 1024;
/// A write buffer that grew past this while a large frame went out is given back once empty,
/// so an idle connection does not hold on to a transfer batch's worth of memory.
const RETAINED_WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// Which way requests travel on a connection.
#[derive(Debug)]
pub(super) enum Role {
    /// Accepted from `from`: requests in, replies out.
    Inbound { from: SocketAddr },
    /// Opened by us to `peer`: requests out, replies in.
    Outbound {
        peer: SocketAddr,
        /// The non-blocking connect has completed.
        connected: bool,
        /// When an unfinished connect is given up.
        connect_deadline: Millis,
        /// Requests written (or queued) on this connection whose replies have not come back.
        awaiting: u64,
        /// The peer has answered on it (a reply other than a refusal, or the handshake's
        /// proof of the key): closing it before then is a failed dial (see `Redial`).
        reached: bool,
    },
}

impl Role {
    /// The other end: who connected to us, or the peer we connected to.
    pub fn remote(&self) -> SocketAddr {
        match *self {
            Role::Inbound { from } => from,
            Role::Outbound { peer, .. } => peer,
        }
    }
}

/// Where a connection stands with the peer handshake (see [`crate::secure`]).
pub(super) enum Security {
    /// No handshake: the node has no keyring, or this is a client's connection (RESP, or one
    /// whose first bytes were a frame). Only client requests are accepted on an inbound one
    /// when the ring requires its key.
    Plain,
    /// Inbound, the node has a keyring: the first bytes tell a peer's `Hello` from a client's
    /// frame.
    Undecided,
    /// Outbound: `Hello` sent, the answer awaited; frames wait in `plain_out`.
    Initiating(Box<Initiator>),
    /// Authenticated: every byte in and out is in sealed records.
    Sealed(Box<Channel>),
    /// A client over TLS ([`crate::tls`]): every byte in and out goes through rustls.
    Tls(Box<rustls::ServerConnection>),
}

/// What decides the security of a new inbound connection.
pub(super) struct Accepting<'a> {
    pub keyring: Option<&'a Keyring>,
    pub tls: Option<&'a std::sync::Arc<rustls::ServerConfig>>,
}

/// Whether an inbound connection is a client's (counted against `max_clients`) or a peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Not known yet (an inbound frame connection before its first frame).
    Unknown,
    Client,
    Peer,
}

/// What [`Conn::read_available`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadStatus {
    /// The socket has nothing more for now.
    Drained,
    /// The read budget ran out before the socket was drained: read again soon.
    MoreAvailable,
    /// The peer closed its side (`Ok(0)`).
    Closed,
}

/// [`Conn::resp_parts`]: the session, the read buffer, the write buffer, the request starts.
pub(super) type RespParts<'a> = (
    &'a mut RespSession,
    &'a mut BytesMut,
    &'a mut Vec<u8>,
    &'a mut crate::latency::Started,
);

pub(super) struct Conn {
    pub stream: TcpStream,
    pub role: Role,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written to the socket.
    wpos: usize,
    /// Whether the socket is registered with `WRITABLE` interest.
    write_interest: bool,
    /// Whether the loop's list of connections to flush holds this one.
    pub flush_queued: bool,
    /// Its output was held for one turn of the loop already: it goes at the next flush (see
    /// the loop's `flush_queued`).
    pub flush_held: bool,
    /// Requests are not being read because too many replies are waiting to be written.
    pub read_paused: bool,
    /// An inbound connection from the RESP listener speaks the Redis protocol: its commands
    /// and replies go through this session instead of the frame codec.
    pub resp: Option<Box<RespSession>>,
    pub security: Security,
    /// Ciphertext read and not yet opened (while `Initiating` or `Sealed`).
    raw_in: BytesMut,
    /// Frames encoded and not yet sealed (while `Initiating` or `Sealed`).
    plain_out: Vec<u8>,
    /// An outbound connection opened with a key that is no longer the keyring's first: it is
    /// no longer used for new requests and is closed once its replies are in.
    pub retiring: bool,
    /// Client or peer (inbound connections; outbound ones are peers).
    pub kind: Kind,
    /// When bytes last came in.
    pub last_active: Millis,
    /// The user a binary-protocol client logged in as (`LOGIN`).
    pub session: Option<crate::auth::Session>,
    /// Requests of a binary client handed to the core and not yet answered (a RESP client's
    /// are counted by its session): a client waiting for a reply is not idle.
    pub requests_in_flight: usize,
    /// When this client's requests in the core entered it (`latency.rs`).
    pub started: crate::latency::Started,
}

/// Feeds the TLS records in `raw` to rustls (removing them), appends the plaintext to `plain`,
/// and queues what rustls has to send (handshake messages, alerts) on `out`.
fn tls_read(
    tls: &mut rustls::ServerConnection,
    raw: &mut BytesMut,
    plain: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<(), SecureError> {
    use bytes::Buf;
    let tls_error = |e: &dyn std::fmt::Display| SecureError::Tls(e.to_string());
    loop {
        if !raw.is_empty() {
            let mut slice = &raw[..];
            let n = tls.read_tls(&mut slice).map_err(|e| tls_error(&e))?;
            raw.advance(n);
            if let Err(e) = tls.process_new_packets() {
                // The alert goes out before the close.
                let _ = tls.write_tls(out);
                return Err(tls_error(&e));
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut read_any = false;
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    plain.extend_from_slice(&chunk[..n]);
                    read_any = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(tls_error(&e)),
            }
        }
        if raw.is_empty() || !read_any && raw.len() < 5 {
            break;
        }
    }
    while tls.wants_write() {
        tls.write_tls(out).map_err(|e| tls_error(&e))?;
    }
    Ok(())
}

impl Conn {
    /// The other end of the connection ([`Role::remote`]).
    pub fn remote(&self) -> SocketAddr {
        self.role.remote()
    }

    /// A connection registered for `interest` already.
    pub fn new(stream: TcpStream, role: Role, write_interest: bool) -> Conn {
        Conn {
            stream,
            role,
            rbuf: BytesMut::with_capacity(INITIAL_READ_BUFFER_BYTES),
            wbuf: Vec::new(),
            wpos: 0,
            write_interest,
            flush_queued: false,
            flush_held: false,
            read_paused: false,
            resp: None,
            security: Security::Plain,
            raw_in: BytesMut::new(),
            plain_out: Vec::new(),
            retiring: false,
            kind: Kind::Unknown,
            last_active: 0,
            session: None,
            requests_in_flight: 0,
            started: Default::default(),
        }
    }

    /// Bytes read and not yet processed (plaintext and ciphertext).
    pub fn buffered_input(&self) -> usize {
        self.rbuf.len() + self.raw_in.len()
    }

    /// Whether a whole frame is buffered, to be handed on before more is read (a broken header
    /// counts: the frame loop finds it and closes the connection).
    pub fn has_whole_frame(&self) -> bool {
        !matches!(check(&self.rbuf), Ok(None))
    }

    /// Starts the peer handshake on a new outbound connection: `Hello` goes out first, and
    /// frames wait until the peer has proved the key.
    pub fn start_handshake(&mut self, keyring: &Keyring) -> Result<(), SecureError> {
        let initiator = Initiator::start(keyring, &mut self.wbuf)?;
        self.security = Security::Initiating(Box::new(initiator));
        Ok(())
    }

    /// Whether the connection completed the peer handshake.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.security, Security::Sealed(_))
    }

    /// Whether the first bytes of an inbound connection have yet to say what it is.
    pub fn is_undecided(&self) -> bool {
        matches!(self.security, Security::Undecided)
    }

    /// The ring key the connection was opened with, once authenticated.
    pub fn key_id(&self) -> Option<[u8; 8]> {
        match &self.security {
            Security::Sealed(channel) => Some(channel.key_id()),
            _ => None,
        }
    }

    /// Moves the handshake on with the bytes read, and opens the records that came: after it,
    /// the read buffer holds plaintext frames only. An error (a stranger's key, a forged or
    /// replayed record) means the connection must be closed; a refusal may have been queued
    /// for the peer to read first.
    pub fn advance_security(&mut self, ctx: &Accepting<'_>) -> Result<(), SecureError> {
        let keyring = ctx.keyring;
        loop {
            match &mut self.security {
                Security::Plain => return Ok(()),
                Security::Undecided if self.rbuf.first() == Some(&crate::tls::TLS_HANDSHAKE_RECORD) => {
                    match ctx.tls {
                        Some(config) => self.start_tls(config)?,
                        None => {
                            self.security = Security::Plain;
                            return Ok(());
                        }
                    }
                }
                Security::Undecided => match handshake::starts_handshake(&self.rbuf) {
                    None => return Ok(()),
                    Some(false) => {
                        self.security = Security::Plain;
                        return Ok(());
                    }
                    Some(true) => {
                        let Some(keyring) = keyring else {
                            self.security = Security::Plain;
                            return Ok(());
                        };
                        let Some(channel) = secure::respond(keyring, &mut self.rbuf, &mut self.wbuf)? else {
                            return Ok(());
                        };
                        self.raw_in = self.rbuf.split();
                        self.security = Security::Sealed(Box::new(channel));
                    }
                },
                Security::Initiating(initiator) => {
                    let Some(channel) = initiator.finish(&mut self.raw_in)? else {
                        return Ok(());
                    };
                    self.security = Security::Sealed(Box::new(channel));
                }
                Security::Sealed(channel) => return channel.open(&mut self.raw_in, &mut self.rbuf),
                Security::Tls(tls) => return tls_read(tls, &mut self.raw_in, &mut self.rbuf, &mut self.wbuf),
            }
        }
    }

    /// A RESP connection's session with its read and write buffers and the starts of its
    /// requests in the core (`None` for a frame one).
    pub fn resp_parts(&mut self) -> Option<RespParts<'_>> {
        let session = self.resp.as_deref_mut()?;
        let out = match self.security {
            Security::Tls(_) => &mut self.plain_out,
            _ => &mut self.wbuf,
        };
        Some((session, &mut self.rbuf, out, &mut self.started))
    }

    /// Starts TLS on a new inbound connection (the RESP port with `--tls-cert`).
    pub fn start_tls(&mut self, config: &std::sync::Arc<rustls::ServerConfig>) -> Result<(), SecureError> {
        let mut tls = rustls::ServerConnection::new(std::sync::Arc::clone(config))
            .map_err(|e| SecureError::Tls(e.to_string()))?;
        // Output is bounded by the event loop's limits, not rustls'.
        tls.set_buffer_limit(None);
        self.raw_in = self.rbuf.split();
        self.security = Security::Tls(Box::new(tls));
        Ok(())
    }

    /// Whether the connection is a TLS client's.
    pub fn is_tls(&self) -> bool {
        matches!(self.security, Security::Tls(_))
    }

    /// Whether the socket can carry bytes yet (an outbound connect may still be under way).
    pub fn is_connected(&self) -> bool {
        match self.role {
            Role::Inbound { .. } => true,
            Role::Outbound { connected, .. } => connected,
        }
    }

    /// Records that an outbound connect has completed.
    pub fn set_connected(&mut self) {
        if let Role::Outbound { connected, .. } = &mut self.role {
            *connected = true;
        }
    }

    /// Whether this node opened the connection (to a peer).
    pub fn is_outbound(&self) -> bool {
        matches!(self.role, Role::Outbound { .. })
    }

    /// Bytes queued and not yet written (sealed or not).
    pub fn pending_output(&self) -> usize {
        self.wbuf.len() - self.wpos + self.plain_out.len()
    }

    /// [`Conn::pending_output`] and the replies a RESP session holds behind one still waiting
    /// for the core: what the output high-water marks compare.
    pub fn output_backlog(&self) -> usize {
        self.pending_output() + self.resp.as_ref().map_or(0, |s| s.held_bytes())
    }

    /// Appends one encoded frame to the output (to be sealed at the flush on an authenticated
    /// connection). On error nothing is queued.
    pub fn push_frame(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        match self.security {
            Security::Initiating(_) | Security::Sealed(_) | Security::Tls(_) => {
                frame.encode(&mut self.plain_out)
            }
            Security::Plain | Security::Undecided => frame.encode(&mut self.wbuf),
        }
    }

    /// Reads what the socket has into the read buffer, through `scratch`, until it would block
    /// or about `budget` bytes have been read (so one busy connection cannot starve the rest).
    ///
    /// With edge-triggered readiness the socket must be read until it would block; a read
    /// shorter than `scratch` proves that too (a stream socket hands over all it holds, up to
    /// the size asked), and saves the extra `read` that would answer `WouldBlock` on every
    /// event. `maybe_closed` (the event reported the read side closed) forces the full drain,
    /// so that the final `Ok(0)` is seen.
    pub fn read_available(
        &mut self,
        scratch: &mut [u8],
        budget: usize,
        maybe_closed: bool,
    ) -> io::Result<ReadStatus> {
        let mut total = 0;
        let sealed = matches!(
            self.security,
            Security::Initiating(_) | Security::Sealed(_) | Security::Tls(_)
        );
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Ok(ReadStatus::Closed),
                Ok(n) => {
                    if sealed {
                        self.raw_in.extend_from_slice(&scratch[..n]);
                    } else {
                        self.rbuf.extend_from_slice(&scratch[..n]);
                    }
                    total += n;
                    if n < scratch.len() && !maybe_closed {
                        return Ok(ReadStatus::Drained);
                    }
                    if total >= budget {
                        return Ok(ReadStatus::MoreAvailable);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next whole frame buffered, if any. An error means the peer does not speak the
    /// protocol: close the connection. The header is checked (including the payload length
    /// against the maximum) before any room is reserved for the payload.
    /// Whether the unread input begins the peer handshake (a node with a keyring talking
    /// to this one, which has none).
    pub fn input_starts_handshake(&self) -> bool {
        handshake::starts_handshake(&self.rbuf) == Some(true)
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        decode(&mut self.rbuf)
    }

    /// Writes queued bytes until the socket would block or the queue is empty.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.is_connected() {
            return Ok(());
        }
        match &mut self.security {
            Security::Sealed(channel) if !self.plain_out.is_empty() => {
                channel.seal(&self.plain_out, &mut self.wbuf);
                self.plain_out.clear();
            }
            Security::Tls(tls) => {
                if !self.plain_out.is_empty() {
                    tls.writer().write_all(&self.plain_out)?;
                    self.plain_out.clear();
                }
                while tls.wants_write() {
                    tls.write_tls(&mut self.wbuf)?;
                }
            }
            _ => {}
        }
        if self.plain_out.capacity() > RETAINED_WRITE_BUFFER_BYTES && self.plain_out.is_empty() {
            self.plain_out = Vec::new();
        }
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > RETAINED_WRITE_BUFFER_BYTES {
                self.wbuf = Vec::new();
            }
        } else if self.wpos >= self.wbuf.len() / 2 {
            // Keep the unwritten tail at the front so the buffer does not creep forward; the
            // copy is at most as large as what was just written.
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    /// Registers `WRITABLE` interest exactly while there is something to write (or a connect
    /// to complete), so the loop is not woken for every writable socket.
    pub fn update_interest(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let want = self.pending_output() > 0 || !self.is_connected();
        if want != self.write_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.stream, token, interest)?;
            self.write_interest = want;
        }
        Ok(())
    }

    /// Checks whether an outbound connect has completed (the steps of mio's
    /// `TcpStream::connect` docs): `Ok(false)` while still in progress, an error if it failed.
    pub fn finish_connect(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
