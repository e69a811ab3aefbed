//! The ring's keyring: the 32-byte keys that make a process a member of the ring, as Serf and
//! memberlist keep them (the first key is used to open connections, every key is accepted).
//!
//! The file (`chordkv node --keyring FILE`) holds one key per line in standard base64 (44
//! characters; `chordkv keygen` prints one). Blank lines and lines starting with `#` are
//! skipped. A key is known on the wire by its id, the first 8 bytes of SHA-256 of a fixed label
//! and the key, never by the key itself.
//!
//! Rotation without downtime (docs/architecture.md, section 4): add the new key as a second
//! line on every node and reload (SIGHUP); move it to the first line everywhere and reload;
//! remove the old line everywhere and reload. Connections opened with a key that is removed
//! are closed at the reload; connections a node opened with a key that is no longer its first
//! are replaced once their requests are answered.

use std::fmt;
use std::path::Path;

use base64::Engine;
use chordkv_protocol::handshake::KEY_ID_BYTES;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a ring key.
pub const KEY_BYTES: usize = 32;
/// Most keys a keyring may hold (a rotation needs two).
pub const MAX_KEYS: usize = 16;

const KEY_ID_LABEL: &[u8] = b"chordkv keyring key id v1";

/// One key of the ring.
#[derive(Clone)]
pub struct RingKey {
    id: [u8; KEY_ID_BYTES],
    secret: [u8; KEY_BYTES],
}

impl RingKey {
    /// The key with these 32 bytes.
    pub fn new(secret: [u8; KEY_BYTES]) -> RingKey {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(KEY_ID_LABEL);
        ctx.update(&secret);
        let hash = ctx.finish();
        let id = hash.as_ref()[..KEY_ID_BYTES].try_into().expect("8 bytes");
        RingKey { id, secret }
    }

    /// The key's public name on the wire.
    pub fn id(&self) -> [u8; KEY_ID_BYTES] {
        self.id
    }

    /// The key's id in hex, for logs and `chordkv keyring`-style listings.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn secret(&self) -> &[u8; KEY_BYTES] {
        &self.secret
    }
}

impl fmt::Debug for RingKey {
    /// Shows the id only: a key must not reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RingKey({})", self.id_hex())
    }
}

/// The keys of the ring; the first opens connections (see the module docs).
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<RingKey>,
}

impl Keyring {
    /// A keyring of these keys, the first used to send.
    ///
    /// # Errors
    /// No key, more than [`MAX_KEYS`], or the same key twice.
    pub fn new(keys: Vec<RingKey>) -> Result<Keyring, String> {
        if keys.is_empty() {
            return Err("the keyring holds no key".into());
        }
        if keys.len() > MAX_KEYS {
            return Err(format!(
                "the keyring holds {} keys (at most {MAX_KEYS})",
                keys.len()
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(format!("key {} appears twice", k.id_hex()));
            }
        }
        Ok(Keyring { keys })
    }

    /// Parses a keyring file's text (see the module docs).
    ///
    /// # Errors
    /// A line that is not base64 of exactly 32 bytes (the message gives its number), or what
    /// [`Keyring::new`] refuses.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| format!("line {}: not base64 ({e})", n + 1))?;
            let secret: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
                format!(
                    "line {}: a key is {KEY_BYTES} bytes, this one {} (make one with `chordkv keygen`)",
                    n + 1,
                    bytes.len()
                )
            })?;
            keys.push(RingKey::new(secret));
        }
        Keyring::new(keys)
    }

    /// Reads and parses a keyring file.
    ///
    /// # Errors
    /// [`crate::Error::Keyring`] naming the file: unreadable, or what [`Keyring::parse`]
    /// refuses.
    pub fn load(path: &Path) -> crate::Result<Keyring> {
        let error = |reason: String| crate::Error::Keyring {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Keyring::parse(&text).map_err(error)
    }

    /// The key that opens connections (the file's first).
    pub fn primary(&self) -> &RingKey {
        &self.keys[0]
    }

    /// The key with this id, if the keyring holds it.
    pub fn find(&self, id: &[u8; KEY_ID_BYTES]) -> Option<&RingKey> {
        self.keys.iter().find(|k| &k.id == id)
    }

    /// Every key, the primary first.
    pub fn keys(&self) -> &[RingKey] {
        &self.keys
    }
}

/// A new random key as a keyring line (base64, 44 characters), from the OS random source.
///
/// # Panics
/// If the OS random source fails (it does not on Linux once booted).
pub fn generate_key() -> String {
    let mut secret = [0u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut secret)
        .expect("the OS random source");
    base64::engine::general_purpose::STANDARD.encode(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keys_ids_and_errors() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(a.len(), 44);
        let ring = Keyring::parse(&format!("# rotation\n{a}\n\n  {b}  \n")).unwrap();
        assert_eq!(ring.keys().len(), 2);
        let again = Keyring::parse(&a).unwrap();
        assert_eq!(
            ring.primary().id(),
            again.primary().id(),
            "ids are derived, stable"
        );
        assert!(ring.find(&again.primary().id()).is_some());
        assert!(
            !format!("{:?}", ring).contains(&a[..8]),
            "Debug never shows a key"
        );

        assert!(Keyring::parse("").unwrap_err().contains("no key"));
        assert!(Keyring::parse("not base64!")
            .unwrap_err()
            .contains("line 1: not base64"));
        assert!(Keyring::parse("\naGVsbG8=")
            .unwrap_err()
            .contains("line 2: a key is 32 bytes, this one 5"));
        assert!(Keyring::parse(&format!("{a}\n{a}"))
            .unwrap_err()
            .contains("twice"));
    }
}
