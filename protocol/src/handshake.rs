//! The peer handshake and the sealed record layer: the byte layouts only (no cryptography
//! here; the server crate's `secure` module computes nonces, proofs and ciphertexts).
//!
//! A node started with a keyring (`chordkv node --keyring FILE`) opens every connection to a
//! peer with a handshake that proves both ends hold a key of the ring, in the manner of a
//! pre-shared-key TLS handshake; after it, every byte in either direction travels in sealed
//! records. A connection that starts with a frame instead is a client's.
//!
//! ```text
//!  message    bytes  layout
//!  ---------  -----  ---------------------------------------------------------------------
//!  Hello      46     magic "CKPH" | kind u8 = 1 | version u8 = 1 | key_id [8] | nonce [32]
//!  HelloOk    69     magic "CKPH" | kind u8 = 2 | nonce [32] | proof [32]
//!  Refused    7+n    magic "CKPH" | kind u8 = 3 | len u16 | n bytes of UTF-8 (n <= 512)
//!  record     4+n    len u32 | n bytes of ciphertext, the 16-byte tag last
//!                    (16 < n <= MAX_RECORD_PLAINTEXT + 16)
//! ```
//!
//! The initiator sends `Hello` naming the key it uses (`key_id`: the first 8 bytes of
//! SHA-256 of a fixed label and the key) and a fresh random nonce. The responder, if it holds
//! that key, answers `HelloOk` with its own nonce and a proof (an HMAC under a key derived from
//! the ring key and both nonces) that the initiator checks; otherwise `Refused`, and closes.
//! Then both switch to records, each direction with its own key derived from the ring key and
//! both nonces (HKDF), and a nonce that counts the records sent in that direction: a record
//! replayed, dropped, reordered or taken from another connection fails to open, and so does
//! the first record of an initiator that does not hold the key. The magic cannot begin a frame
//! (a frame's third byte is its version, [`crate::frame::VERSION`], never `P`).

/// The first bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"CKPH";
/// The handshake version `Hello` carries.
pub const VERSION: u8 = 1;
/// Bytes of a key id.
pub const KEY_ID_BYTES: usize = 8;
/// Bytes of a nonce and of a proof.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof.
pub const PROOF_BYTES: usize = 32;
/// Longest reason a `Refused` carries.
pub const MAX_REASON_BYTES: usize = 512;
/// Bytes of a record's length prefix.
pub const RECORD_HEADER_BYTES: usize = 4;
/// Bytes of the authentication tag at the end of every record.
pub const TAG_BYTES: usize = 16;
/// Most plaintext bytes one record carries; a longer stream is cut into several records.
pub const MAX_RECORD_PLAINTEXT: usize = 64 * 1024;

const HELLO: u8 = 1;
const HELLO_OK: u8 = 2;
const REFUSED: u8 = 3;

/// One handshake message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The initiator's opening: which ring key it uses and its nonce.
    Hello {
        key_id: [u8; KEY_ID_BYTES],
        nonce: [u8; NONCE_BYTES],
    },
    /// The responder holds the key: its nonce and its proof of the key.
    HelloOk {
        nonce: [u8; NONCE_BYTES],
        proof: [u8; PROOF_BYTES],
    },
    /// The responder does not accept the initiator (the reason is for the initiator's log).
    Refused { reason: String },
}

/// A handshake that does not parse. The connection is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a handshake message (bad magic)")]
    BadMagic,
    #[error("unknown handshake message kind {0}")]
    UnknownKind(u8),
    #[error("unsupported handshake version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("refusal reason of {0} bytes (at most {MAX_REASON_BYTES})")]
    ReasonTooLong(usize),
    #[error("refusal reason is not UTF-8")]
    ReasonNotUtf8,
    #[error("record of {0} bytes (a record holds {min} to {max})", min = TAG_BYTES + 1, max = MAX_RECORD_PLAINTEXT + TAG_BYTES)]
    BadRecordLength(usize),
}

/// Whether `buf` (the first bytes of a connection) begins a handshake: `None` while too few
/// bytes have come to tell.
pub fn starts_handshake(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Some(false);
    }
    (n == MAGIC.len()).then_some(true)
}

impl Handshake {
    /// Appends the message's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        match self {
            Handshake::Hello { key_id, nonce } => {
                out.push(HELLO);
                out.push(VERSION);
                out.extend_from_slice(key_id);
                out.extend_from_slice(nonce);
            }
            Handshake::HelloOk { nonce, proof } => {
                out.push(HELLO_OK);
                out.extend_from_slice(nonce);
                out.extend_from_slice(proof);
            }
            Handshake::Refused { reason } => {
                let mut end = reason.len().min(MAX_REASON_BYTES);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.push(REFUSED);
                out.extend_from_slice(&(end as u16).to_be_bytes());
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
        }
    }

    /// The message at the front of `buf` and its length in bytes, `Ok(None)` while it is
    /// incomplete. Never allocates more than a refusal's reason (at most 512 bytes).
    pub fn decode(buf: &[u8]) -> Result<Option<(Handshake, usize)>, HandshakeError> {
        match starts_handshake(buf) {
            None => return Ok(None),
            Some(false) => return Err(HandshakeError::BadMagic),
            Some(true) => {}
        }
        let Some(&kind) = buf.get(4) else {
            return Ok(None);
        };
        let body = &buf[5..];
        match kind {
            HELLO => {
                let Some(&version) = body.first() else {
                    return Ok(None);
                };
                if version != VERSION {
                    return Err(HandshakeError::UnsupportedVersion(version));
                }
                if body.len() < 1 + KEY_ID_BYTES + NONCE_BYTES {
                    return Ok(None);
                }
                let key_id = body[1..1 + KEY_ID_BYTES].try_into().expect("8 bytes");
                let nonce = body[1 + KEY_ID_BYTES..1 + KEY_ID_BYTES + NONCE_BYTES]
                    .try_into()
                    .expect("32 bytes");
                Ok(Some((
                    Handshake::Hello { key_id, nonce },
                    5 + 1 + KEY_ID_BYTES + NONCE_BYTES,
                )))
            }
            HELLO_OK => {
                if body.len() < NONCE_BYTES + PROOF_BYTES {
                    return Ok(None);
                }
                let nonce = body[..NONCE_BYTES].try_into().expect("32 bytes");
                let proof = body[NONCE_BYTES..NONCE_BYTES + PROOF_BYTES]
                    .try_into()
                    .expect("32 bytes");
                Ok(Some((
                    Handshake::HelloOk { nonce, proof },
                    5 + NONCE_BYTES + PROOF_BYTES,
                )))
            }
            REFUSED => {
                if body.len() < 2 {
                    return Ok(None);
                }
                let len = u16::from_be_bytes([body[0], body[1]]) as usize;
                if len > MAX_REASON_BYTES {
                    return Err(HandshakeError::ReasonTooLong(len));
                }
                if body.len() < 2 + len {
                    return Ok(None);
                }
                let reason = std::str::from_utf8(&body[2..2 + len])
                    .map_err(|_| HandshakeError::ReasonNotUtf8)?
                    .to_string();
                Ok(Some((Handshake::Refused { reason }, 5 + 2 + len)))
            }
            other => Err(HandshakeError::UnknownKind(other)),
        }
    }
}

/// The ciphertext length a record header announces, checked against the bounds: `Ok(None)`
/// while the header is incomplete.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
    let Some(header) = buf.get(..RECORD_HEADER_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
    if len <= TAG_BYTES || len > MAX_RECORD_PLAINTEXT + TAG_BYTES {
        return Err(HandshakeError::BadRecordLength(len));
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_byte_by_byte() {
        let messages = [
            Handshake::Hello {
                key_id: [1; 8],
                nonce: [2; 32],
            },
            Handshake::HelloOk {
                nonce: [3; 32],
                proof: [4; 32],
            },
            Handshake::Refused {
                reason: "no key of this ring has id 0102".into(),
            },
        ];
        for m in messages {
            let mut bytes = Vec::new();
            m.encode(&mut bytes);
            for cut in 0..bytes.len() {
                assert_eq!(Handshake::decode(&bytes[..cut]), Ok(None), "{m:?} cut at {cut}");
            }
            bytes.extend_from_slice(b"rest");
            let (back, used) = Handshake::decode(&bytes).unwrap().unwrap();
            assert_eq!(back, m);
            assert_eq!(&bytes[used..], b"rest");
        }
    }

    #[test]
    fn a_frame_is_not_a_handshake_and_bad_input_is_an_error() {
        let frame = crate::frame::Frame::new(1, crate::message::Message::Ping)
            .to_bytes()
            .unwrap();
        assert_eq!(starts_handshake(&frame), Some(false));
        assert_eq!(starts_handshake(b"CK"), None);
        assert_eq!(
            Handshake::decode(b"CKPH\x09"),
            Err(HandshakeError::UnknownKind(9))
        );
        assert_eq!(
            Handshake::decode(b"CKPH\x01\x07"),
            Err(HandshakeError::UnsupportedVersion(7))
        );
        assert_eq!(
            Handshake::decode(b"CKPH\x03\xff\xff"),
            Err(HandshakeError::ReasonTooLong(65535))
        );
        assert_eq!(record_len(&[0, 0, 0]), Ok(None));
        assert_eq!(
            record_len(&[0, 0, 0, 16]),
            Err(HandshakeError::BadRecordLength(16))
        );
        assert_eq!(
            record_len(&[0xff; 4]),
            Err(HandshakeError::BadRecordLength(u32::MAX as usize))
        );
        assert_eq!(record_len(&[0, 0, 1, 0]), Ok(Some(256)));
    }
}
