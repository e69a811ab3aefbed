//! Who may do what on a connection: the rules of docs/architecture.md, section 4 ("Who may
//! talk to a node", "Limits"), applied by the event loop to every request that comes in on an
//! inbound connection, and the refusals, limited logs and limits that go with them.

use std::net::SocketAddr;

use chordkv_protocol::{ErrorCode, Frame, Message};
use mio::Token;

use super::{Kind, Role, Server, Why};
use crate::auth;
use crate::keyring::Keyring;
use crate::log::Repeat;
use crate::{ClientAuth, ClientLimits};
use chordkv_core::chord::Millis;
use tracing::{info, warn};

/// What [`Server::admit`] decided about a request on an inbound connection.
pub(super) enum Admit {
    /// Hand it to the core.
    Serve,
    /// Answered here (a login, a refusal that keeps the connection).
    Answered,
    /// Refused, and the connection closed.
    Closed,
}

/// What a client from another host is told in protected mode (Redis' `DENIED`, in our words).
pub(crate) const PROTECTED_MODE: &str =
    "DENIED chordkv is running in protected mode because protected mode is enabled and \
    no password is set for the default user. In this mode connections are only accepted from the loopback \
    interface. If you want to connect from external computers, either set a password (--requirepass or \
    --users, with --keyring) or restart the node with '--protected-mode no' (MAKE SURE the node is not \
    publicly accessible from the internet if you do so).";

impl Server {
    /// Decides a request `frame` that came on the inbound connection `token`, in this order: a
    /// LOGIN is answered here; a client request without TLS where TLS is required, without a
    /// login where credentials are configured, beyond the user's permissions, or from another
    /// host in protected mode is refused; a peer operation without the ring's key is refused
    /// (an admin's FORGET excepted); a new client over `max_clients` is refused. A connection
    /// becomes a client's or a peer's with its first request.
    pub(super) fn admit(&mut self, now: Millis, token: Token, frame: &Frame) -> Admit {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Admit::Closed;
        };
        if let Message::Login { user, password } = &frame.message {
            let reply = match &self.auth.users {
                None => Message::Error {
                    code: ErrorCode::BadRequest,
                    hops: 0,
                    text: "ERR AUTH <password> called without any password configured for the default user"
                        .into(),
                },
                Some(users) => match users.login(user, password) {
                    Ok(session) => {
                        let user = session.user.clone();
                        conn.session = Some(session);
                        Message::LoginReply { user }
                    }
                    Err(text) => Message::Error {
                        code: ErrorCode::Unauthorized,
                        hops: 0,
                        text: text.into(),
                    },
                },
            };
            let _ = conn.push_frame(&Frame::new(frame.request_id, reply));
            self.queue_flush(now, token);
            return Admit::Answered;
        }
        let peer = conn.is_authenticated();
        // With a keyring, peers are known by their handshake, so a client that
        // is neither a peer nor over TLS is refused; without one, plain
        // connections are peers' too (see the start-up warning).
        if self.tls.is_some()
            && self.security.keyring.is_some()
            && !peer
            && !conn.is_tls()
            && frame.is_client_request()
        {
            let error = Message::Error {
                code: ErrorCode::Unauthorized,
                hops: 0,
                text: "this node serves clients over TLS only (chordkv --tls)".into(),
            };
            let _ = conn.push_frame(&Frame::new(frame.request_id, error));
            let _ = conn.flush();
            self.close(now, token, Why::Text("a client without TLS"));
            return Admit::Closed;
        }
        let need = auth::need_of(&frame.message);
        let admin_forget = matches!(frame.message, Message::Forget { .. });
        if !peer && (frame.is_client_request() || admin_forget) {
            if self.auth.users.is_some() {
                let denied = match &conn.session {
                    None => Some((ErrorCode::Unauthorized, auth::NOAUTH.to_string())),
                    Some(s) if !s.perms.allow(need) => Some((
                        ErrorCode::Forbidden,
                        format!(
                            "NOPERM User {} has no permissions to run the '{}' command",
                            s.user,
                            frame.message.name()
                        ),
                    )),
                    Some(_) => None,
                };
                if let Some((code, text)) = denied {
                    let error = Message::Error { code, hops: 0, text };
                    let _ = conn.push_frame(&Frame::new(frame.request_id, error));
                    self.queue_flush(now, token);
                    return Admit::Answered;
                }
            } else if frame.is_client_request() {
                if let Role::Inbound { from } = conn.role {
                    if protected_from(&self.auth, self.reachable_from_outside, from) {
                        let error = Message::Error {
                            code: ErrorCode::Unauthorized,
                            hops: 0,
                            text: PROTECTED_MODE.into(),
                        };
                        let _ = conn.push_frame(&Frame::new(frame.request_id, error));
                        let _ = conn.flush();
                        let what = format_args!("refused a client: protected mode");
                        self.warn_repeated(now, Repeat::ClientLimit, from, what);
                        self.close(now, token, Why::Text("protected mode"));
                        return Admit::Closed;
                    }
                }
            }
        }
        let forget_by_admin = admin_forget && conn.session.as_ref().is_some_and(|s| s.perms.admin);
        if self.security.requires_handshake() && !peer && !frame.is_client_request() && !forget_by_admin {
            self.refuse_peer_operation(now, token, frame);
            return Admit::Closed;
        }
        if conn.kind == Kind::Unknown {
            if conn.is_authenticated() || !frame.is_client_request() {
                conn.kind = Kind::Peer;
                if let Role::Inbound { from } = conn.role {
                    // A peer process there may have (re)started: dial it without waiting.
                    self.redial.heard_from(now, from.ip());
                }
            } else if self.clients >= self.limits.max_clients {
                self.refuse_client(now, token, frame);
                return Admit::Closed;
            } else {
                conn.kind = Kind::Client;
                self.clients += 1;
            }
        }
        Admit::Serve
    }

    /// Answers a peer operation that came on a connection without the ring's key with
    /// `Unauthorized`, logs it (limited per host) and closes the connection.
    pub(super) fn refuse_peer_operation(&mut self, now: Millis, token: Token, frame: &Frame) {
        let text = format!(
            "{} is a peer operation: this ring requires its key (chordkv node --keyring)",
            frame.message.name()
        );
        if let Some(conn) = self.conns.get_mut(&token) {
            let error = Message::Error {
                code: ErrorCode::Unauthorized,
                hops: 0,
                text: text.clone(),
            };
            let _ = conn.push_frame(&Frame::new(frame.request_id, error));
            let _ = conn.flush();
        }
        self.warn_repeated_on(now, Repeat::PeerOperation, token, format_args!("refused: {text}"));
        self.close(now, token, Why::Text("refused"));
    }

    /// Answers a client over `max_clients` with Redis' words (as a `Busy` error) and closes.
    pub(super) fn refuse_client(&mut self, now: Millis, token: Token, frame: &Frame) {
        if let Some(conn) = self.conns.get_mut(&token) {
            let error = Message::Error {
                code: ErrorCode::Busy,
                hops: 0,
                text: "max number of clients reached".into(),
            };
            let _ = conn.push_frame(&Frame::new(frame.request_id, error));
            let _ = conn.flush();
        }
        let max = self.limits.max_clients;
        let what = format_args!("refused a client: max number of clients reached ({max})");
        self.warn_repeated_on(now, Repeat::ClientLimit, token, what);
        self.close(now, token, Why::Text("max number of clients reached"));
    }

    /// Closes clients idle for longer than `idle_timeout_ms` (looked for once a second): no
    /// input since, nothing in flight, nothing unwritten. A connection that has not yet sent a
    /// whole first frame is idle too (as Redis counts a client from its accept): it is not
    /// known to be a peer's, and a peer sends its first frame as soon as it connects.
    pub(super) fn close_idle_clients(&mut self, now: Millis) {
        let timeout = self.limits.idle_timeout_ms;
        if timeout == 0 || now < self.last_idle_sweep + 1_000 {
            return;
        }
        self.last_idle_sweep = now;
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.kind != Kind::Peer
                    && now.saturating_sub(c.last_active) > timeout
                    && c.pending_output() == 0
                    && c.requests_in_flight == 0
                    && c.resp.as_ref().is_none_or(|s| s.is_idle())
            })
            .map(|(t, _)| t)
            .collect();
        for token in idle {
            self.close(now, token, Why::Text("idle timeout"));
        }
    }

    /// Reads the keyring file again (SIGHUP): the rotation steps of [`crate::keyring`].
    /// Connections opened with a key the file no longer holds are closed; connections this
    /// node opened with a key that is no longer the first are retired (replaced for new
    /// requests, closed once their replies are in). A file that does not parse changes nothing.
    pub(super) fn reload_keyring(&mut self, now: Millis) {
        let Some(path) = self.security.keyring_path.clone() else {
            warn!("SIGHUP: no --keyring to read again");
            return;
        };
        let keyring = match Keyring::load(&path) {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "SIGHUP: keeping the keyring in use");
                return;
            }
        };
        info!(
            sending_with = %keyring.primary().id_hex(),
            "SIGHUP: keyring of {} key(s) read again",
            keyring.keys().len()
        );
        let primary = keyring.primary().id();
        let mut close = Vec::new();
        for (token, conn) in self.conns.iter_mut() {
            let Some(id) = conn.key_id() else { continue };
            if keyring.find(&id).is_none() {
                close.push(token);
            } else if let Role::Outbound { peer, awaiting, .. } = conn.role {
                if id != primary && !conn.retiring {
                    conn.retiring = true;
                    if self.peers.get(&peer) == Some(&token) {
                        self.peers.remove(&peer);
                    }
                    if awaiting == 0 && conn.pending_output() == 0 {
                        close.push(token);
                    }
                }
            }
        }
        self.security.keyring = Some(keyring);
        for token in close {
            self.close(now, token, Why::Text("its key was rotated out"));
        }
    }
}

/// Whether protected mode refuses a client from `from`: no credentials, the node reachable
/// from other hosts (`reachable`: it listens on an address that is not loopback), and the
/// client on another host.
pub(super) fn protected_from(auth: &ClientAuth, reachable: bool, from: SocketAddr) -> bool {
    auth.protected_mode && auth.users.is_none() && reachable && !from.ip().is_loopback()
}

/// Descriptors kept for what is not a client: listeners, peers, the store, the poll.
const RESERVED_DESCRIPTORS: u64 = 128;

/// Raises the soft limit on open files to what `max_clients` needs (up to the hard limit), and
/// lowers `max_clients` to what the limit then allows, as Redis does at start: at the limit the
/// node would stop accepting anyone, peers included, so a client beyond it is refused instead.
pub(super) fn fit_descriptor_limit(mut limits: ClientLimits) -> ClientLimits {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return limits;
    }
    let want = limits.max_clients as u64 + RESERVED_DESCRIPTORS;
    if rl.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want.min(rl.rlim_max),
            rlim_max: rl.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl.rlim_cur = raised.rlim_cur;
        }
    }
    let allowed = rl.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS).max(1) as usize;
    if allowed < limits.max_clients {
        warn!(
            "max clients lowered from {} to {allowed}: the open-file limit is {} \
             (raise it with ulimit -n to serve more)",
            limits.max_clients, rl.rlim_cur
        );
        limits.max_clients = allowed;
    }
    limits
}
