//! Client credentials: `--requirepass` (Redis' password of the `default` user) and an
//! ACL-style users file (`--users FILE`), with the three permissions a key-value store needs.
//!
//! The users file takes a subset of Redis' ACL file syntax (redis.io/docs/latest/operate/oss_and_stack/management/security/acl),
//! one user per line; blank lines and `#` comments are skipped:
//!
//! ```text
//! user alice on #5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8 +@read +@write
//! user ops   on >plain-text-password +@all
//! user old   off #... +@read
//! ```
//!
//! - `#HEX`: the SHA-256 of the password, 64 hex digits (`printf %s PASSWORD | sha256sum`);
//!   `>PASSWORD`: the password itself (it is hashed when read). One of the two is required.
//! - `on` / `off`: a user that is `off` cannot log in (the default is `on`).
//! - Permissions: `+@read` (GET, MGET, EXISTS, DBSIZE; the binary protocol's GET, GET_INFO,
//!   GET_STATS, GET_MEMBERS), `+@write` (SET, MSET, DEL; PUT, DELETE), `+@admin` (CONFIG;
//!   FORGET), `+@all` (all three). Connection commands (PING, AUTH, HELLO, CLIENT, INFO,
//!   COMMAND, QUIT) need none once logged in. `~*` and `&*` (every key, every channel) are
//!   accepted and change nothing.
//!
//! Redis' words are used for every refusal: `NOAUTH Authentication required.`, `WRONGPASS
//! invalid username-password pair or user is disabled.`, `NOPERM User U has no permissions to
//! run the 'C' command`.

use std::path::Path;

use ring::digest;

/// What a user may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub admin: bool,
}

impl Perms {
    /// Every permission.
    pub const ALL: Perms = Perms {
        read: true,
        write: true,
        admin: true,
    };

    /// Whether these permissions include `need`.
    pub fn allow(self, need: Need) -> bool {
        match need {
            Need::Nothing => true,
            Need::Read => self.read,
            Need::Write => self.write,
            Need::Admin => self.admin,
        }
    }
}

/// The permission a command or request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Read,
    Write,
    Admin,
}

/// A logged-in user, as a connection keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub perms: Perms,
}

struct User {
    name: String,
    hash: [u8; 32],
    enabled: bool,
    perms: Perms,
}

/// The users a node accepts. See the module docs.
pub struct Users {
    users: Vec<User>,
}

impl std::fmt::Debug for Users {
    /// Names only: no hash reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.users.iter().map(|u| &u.name))
            .finish()
    }
}

/// Redis' answer to a wrong user or password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Redis' answer to a command before authentication.
pub const NOAUTH: &str = "NOAUTH Authentication required.";

fn sha256(password: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, password)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

impl Users {
    /// Only the `default` user, with `password` and every permission (`--requirepass`).
    pub fn requirepass(password: &str) -> Users {
        Users {
            users: vec![User {
                name: "default".into(),
                hash: sha256(password.as_bytes()),
                enabled: true,
                perms: Perms::ALL,
            }],
        }
    }

    /// Adds (or replaces) the `default` user with `password` and every permission, as
    /// `--requirepass` beside `--users` does.
    pub fn with_requirepass(mut self, password: &str) -> Users {
        self.users.retain(|u| u.name != "default");
        self.users.extend(Users::requirepass(password).users);
        self
    }

    /// Parses a users file's text.
    ///
    /// # Errors
    /// A line that is not `user NAME ...`, an unknown rule, a user without a password, a hash
    /// that is not 64 hex digits, or the same user twice (the message gives the line number).
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users: Vec<User> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |msg: String| format!("line {}: {msg}", n + 1);
            let mut words = line.split_whitespace();
            if words.next() != Some("user") {
                return Err(at(
                    "expected `user NAME [on|off] #SHA256|>PASSWORD +@PERMISSION...`".into(),
                ));
            }
            let name = words.next().ok_or_else(|| at("a user without a name".into()))?;
            let mut user = User {
                name: name.to_string(),
                hash: [0; 32],
                enabled: true,
                perms: Perms::default(),
            };
            let mut has_password = false;
            for w in words {
                match w {
                    "on" => user.enabled = true,
                    "off" => user.enabled = false,
                    "+@read" => user.perms.read = true,
                    "+@write" => user.perms.write = true,
                    "+@admin" => user.perms.admin = true,
                    "+@all" | "allcommands" => user.perms = Perms::ALL,
                    "~*" | "&*" | "allkeys" | "allchannels" => {}
                    w if w.starts_with('>') => {
                        user.hash = sha256(&w.as_bytes()[1..]);
                        has_password = true;
                    }
                    w if w.starts_with('#') => {
                        user.hash = parse_hash(&w[1..]).ok_or_else(|| {
                            at(format!(
                                "`{w}` is not # and 64 hex digits (the SHA-256 of the password)"
                            ))
                        })?;
                        has_password = true;
                    }
                    other => return Err(at(format!("unknown rule `{other}`"))),
                }
            }
            if !has_password {
                return Err(at(format!("user {name} has no password (>PASSWORD or #SHA256)")));
            }
            if users.iter().any(|u| u.name == user.name) {
                return Err(at(format!("user {name} appears twice")));
            }
            users.push(user);
        }
        if users.is_empty() {
            return Err("the users file defines no user".into());
        }
        Ok(Users { users })
    }

    /// Reads and parses a users file.
    ///
    /// # Errors
    /// [`crate::Error::Users`] naming the file: unreadable, or what [`Users::parse`] refuses.
    pub fn load(path: &Path) -> crate::Result<Users> {
        let error = |reason: String| crate::Error::Users {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Users::parse(&text).map_err(error)
    }

    /// The session of `user` if `password` is theirs and they are enabled; otherwise Redis'
    /// [`WRONGPASS`].
    pub fn login(&self, user: &str, password: &[u8]) -> Result<Session, &'static str> {
        let hash = sha256(password);
        self.users
            .iter()
            .find(|u| u.name == user && u.enabled && u.hash == hash)
            .map(|u| Session {
                user: u.name.clone(),
                perms: u.perms,
            })
            .ok_or(WRONGPASS)
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The permission a binary-protocol request needs from a client (peers need none).
pub fn need_of(message: &chordkv_protocol::Message) -> Need {
    use chordkv_protocol::Message::*;
    match message {
        Get { .. } | GetInfo | GetStats | GetMembers { .. } | ScanKeys { .. } => Need::Read,
        Put { .. } | Delete { .. } => Need::Write,
        // Any command that may write needs the write permission; read-only ones (GET, STRLEN,
        // LCS, ...) the read permission.
        Execute { commands, .. } => {
            let writes = commands.iter().any(|words| {
                words
                    .first()
                    .and_then(|name| chordkv_core::command::find(name))
                    .is_none_or(|spec| spec.write)
            });
            if writes {
                Need::Write
            } else {
                Need::Read
            }
        }
        RingCommand {
            command: chordkv_protocol::RangeCommand::Count,
        } => Need::Read,
        RingCommand { .. } => Need::Write,
        Forget { .. } => Need::Admin,
        _ => Need::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_logins_and_permissions() {
        // sha256("password")
        let text = "\
            # users\n\
            user alice on #5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8 ~* +@read\n\
            user ops >s3cret +@all\n\
            user gone off >x +@read\n";
        let users = Users::parse(text).unwrap();
        let alice = users.login("alice", b"password").unwrap();
        assert!(alice.perms.allow(Need::Read) && !alice.perms.allow(Need::Write));
        assert_eq!(users.login("alice", b"wrong"), Err(WRONGPASS));
        assert_eq!(users.login("ops", b"s3cret").unwrap().perms, Perms::ALL);
        assert_eq!(users.login("gone", b"x"), Err(WRONGPASS), "a user that is off");
        assert_eq!(users.login("default", b""), Err(WRONGPASS));
        let users = users.with_requirepass("pw");
        assert_eq!(users.login("default", b"pw").unwrap().perms, Perms::ALL);
        assert!(!format!("{users:?}").contains("5e88"));
    }

    #[test]
    fn bad_users_files_name_the_line() {
        for (text, want) in [
            ("", "no user"),
            ("group x", "line 1: expected `user NAME"),
            ("user a +@read", "line 1: user a has no password"),
            ("user a #abc", "line 1: `#abc` is not # and 64 hex digits"),
            ("user a >x\n\nuser a >y", "line 3: user a appears twice"),
            ("user a >x +@everything", "line 1: unknown rule `+@everything`"),
        ] {
            let err = Users::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
