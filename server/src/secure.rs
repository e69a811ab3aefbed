//! Peer authentication and encryption: the handshake and the sealed records whose byte layout
//! is `chordkv_protocol::handshake`'s, computed with `ring` (no cryptography of our own).
//!
//! - **Keys.** Both ends derive everything from the ring key `K` and the two nonces with
//!   HKDF-SHA256 (RFC 5869; salt = initiator nonce | responder nonce, input = `K`): a proof key
//!   and one ChaCha20-Poly1305 key (RFC 8439) per direction. Fresh nonces on both sides make
//!   every connection's keys new, so nothing recorded from one connection opens on another.
//! - **Proof.** The responder proves it holds `K` with HMAC-SHA256 under the proof key; the
//!   initiator proves it by its first record, which opens only under a key derived from `K`.
//! - **Records.** The record's nonce is the count of records sent before it in that direction
//!   (96 bits: 4 zero bytes, a u64), never sent and never reused: a record replayed, dropped,
//!   reordered or spliced from another connection fails to open, and so does a forged one. The
//!   4-byte length prefix is the associated data, so it cannot be altered either.
//!
//! [`Initiator`] and [`respond`] make a [`Channel`]; [`Channel::seal`] and [`Channel::open`]
//! move bytes through it. The event loop drives them over non-blocking sockets; tests and
//! tools can drive them over a blocking one ([`connect_blocking`]).

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use chordkv_protocol::handshake::{
    self, Handshake, MAX_RECORD_PLAINTEXT, NONCE_BYTES, RECORD_HEADER_BYTES, TAG_BYTES,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf::{self, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::keyring::{Keyring, RingKey};

const INFO_PROOF: &[u8] = b"chordkv peer v1 proof";
const INFO_TO_RESPONDER: &[u8] = b"chordkv peer v1 initiator to responder";
const INFO_TO_INITIATOR: &[u8] = b"chordkv peer v1 responder to initiator";
const PROOF_LABEL: &[u8] = b"chordkv peer v1 responder holds the key";

/// Why a handshake or a record failed. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    #[error("the peer handshake is malformed: {0}")]
    Malformed(#[from] handshake::HandshakeError),
    #[error("the peer uses key {0}, which is not in this node's keyring")]
    UnknownKey(String),
    #[error("the peer refused our key: {0}")]
    Refused(String),
    #[error("the peer's proof of the ring key is wrong (it does not hold the key it named)")]
    BadProof,
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("a record failed authentication (forged, replayed, reordered, or sealed without the ring key)")]
    BadRecord,
    #[error("the OS random source failed")]
    Random,
    #[error("TLS: {0}")]
    Tls(String),
}

/// The initiator's side of a handshake in progress: `Hello` sent, `HelloOk` awaited.
pub struct Initiator {
    key: RingKey,
    nonce: [u8; NONCE_BYTES],
}

impl Initiator {
    /// Starts a handshake with the keyring's primary key: appends `Hello` to `out`.
    pub fn start(keyring: &Keyring, out: &mut Vec<u8>) -> Result<Initiator, SecureError> {
        let key = keyring.primary().clone();
        let nonce = random_nonce()?;
        Handshake::Hello {
            key_id: key.id(),
            nonce,
        }
        .encode(out);
        Ok(Initiator { key, nonce })
    }

    /// Reads the responder's answer from the front of `buf` (removing it): `Ok(None)` while
    /// it is incomplete, the channel once the responder has proved the key.
    pub fn finish(&self, buf: &mut BytesMut) -> Result<Option<Channel>, SecureError> {
        let Some((message, used)) = Handshake::decode(buf)? else {
            return Ok(None);
        };
        let _ = buf.split_to(used);
        match message {
            Handshake::HelloOk { nonce, proof } => {
                let keys = derive(&self.key, &self.nonce, &nonce)?;
                hmac::verify(&keys.proof, PROOF_LABEL, &proof).map_err(|_| SecureError::BadProof)?;
                Ok(Some(Channel::new(
                    &self.key,
                    keys.to_responder,
                    keys.to_initiator,
                )))
            }
            Handshake::Refused { reason } => Err(SecureError::Refused(reason)),
            Handshake::Hello { .. } => Err(SecureError::Unexpected {
                expected: "HelloOk",
                got: "Hello",
            }),
        }
    }
}

/// The responder's side: answers a `Hello` at the front of `buf` (removed from it) by
/// appending `HelloOk` to `out` and returning the channel, or by appending `Refused` and
/// failing when the keyring lacks the initiator's key. `Ok(None)` while `Hello` is incomplete.
pub fn respond(
    keyring: &Keyring,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<Option<Channel>, SecureError> {
    let Some((message, used)) = Handshake::decode(buf)? else {
        return Ok(None);
    };
    let _ = buf.split_to(used);
    let Handshake::Hello {
        key_id,
        nonce: theirs,
    } = message
    else {
        return Err(SecureError::Unexpected {
            expected: "Hello",
            got: "a reply",
        });
    };
    let Some(key) = keyring.find(&key_id) else {
        let hex: String = key_id.iter().map(|b| format!("{b:02x}")).collect();
        Handshake::Refused {
            reason: format!("key {hex} is not in this node's keyring"),
        }
        .encode(out);
        return Err(SecureError::UnknownKey(hex));
    };
    let ours = random_nonce()?;
    let keys = derive(key, &theirs, &ours)?;
    let proof = hmac::sign(&keys.proof, PROOF_LABEL);
    Handshake::HelloOk {
        nonce: ours,
        proof: proof.as_ref().try_into().expect("32 bytes"),
    }
    .encode(out);
    Ok(Some(Channel::new(key, keys.to_initiator, keys.to_responder)))
}

/// Both directions of an authenticated connection.
pub struct Channel {
    key_id: [u8; 8],
    seal: Direction,
    open: Direction,
}

struct Direction {
    key: LessSafeKey,
    /// Records sealed (or opened) so far: the next record's nonce.
    count: u64,
}

impl Direction {
    fn nonce(&mut self) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.count.to_be_bytes());
        self.count += 1;
        Nonce::assume_unique_for_key(n)
    }
}

impl Channel {
    fn new(key: &RingKey, seal: LessSafeKey, open: LessSafeKey) -> Channel {
        Channel {
            key_id: key.id(),
            seal: Direction { key: seal, count: 0 },
            open: Direction { key: open, count: 0 },
        }
    }

    /// The id of the ring key this connection was opened with.
    pub fn key_id(&self) -> [u8; 8] {
        self.key_id
    }

    /// Seals `plain` into records appended to `out` (at most [`MAX_RECORD_PLAINTEXT`] bytes
    /// each).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        for chunk in plain.chunks(MAX_RECORD_PLAINTEXT) {
            let len = (chunk.len() + TAG_BYTES) as u32;
            let header = len.to_be_bytes();
            out.extend_from_slice(&header);
            let start = out.len();
            out.extend_from_slice(chunk);
            let nonce = self.seal.nonce();
            let tag = self
                .seal
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start..])
                .expect("a record is far below ChaCha20-Poly1305's message limit");
            out.extend_from_slice(tag.as_ref());
        }
    }

    /// Opens every whole record at the front of `raw` (removing it) and appends its plaintext
    /// to `plain`. A partial record stays in `raw`. Allocates only as ciphertext arrives: a
    /// record header announcing a length allocates nothing.
    pub fn open(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), SecureError> {
        while let Some(len) = handshake::record_len(raw)? {
            if raw.len() < RECORD_HEADER_BYTES + len {
                break;
            }
            let header: [u8; 4] = raw[..RECORD_HEADER_BYTES].try_into().expect("4 bytes");
            let mut record = raw.split_to(RECORD_HEADER_BYTES + len);
            let nonce = self.open.nonce();
            let opened = self
                .open
                .key
                .open_in_place(nonce, Aad::from(header), &mut record[RECORD_HEADER_BYTES..])
                .map_err(|_| SecureError::BadRecord)?;
            plain.extend_from_slice(opened);
        }
        Ok(())
    }
}

struct Derived {
    proof: hmac::Key,
    to_responder: LessSafeKey,
    to_initiator: LessSafeKey,
}

fn derive(
    key: &RingKey,
    initiator: &[u8; NONCE_BYTES],
    responder: &[u8; NONCE_BYTES],
) -> Result<Derived, SecureError> {
    let mut salt = [0u8; 2 * NONCE_BYTES];
    salt[..NONCE_BYTES].copy_from_slice(initiator);
    salt[NONCE_BYTES..].copy_from_slice(responder);
    let prk = hkdf::Salt::new(HKDF_SHA256, &salt).extract(key.secret());
    let proof = hmac::Key::from(
        prk.expand(&[INFO_PROOF], hmac::HMAC_SHA256)
            .map_err(|_| SecureError::Random)?,
    );
    let aead_key = |info: &'static [u8]| -> Result<LessSafeKey, SecureError> {
        let info = [info];
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .map_err(|_| SecureError::Random)?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    };
    Ok(Derived {
        proof,
        to_responder: aead_key(INFO_TO_RESPONDER)?,
        to_initiator: aead_key(INFO_TO_INITIATOR)?,
    })
}

fn random_nonce() -> Result<[u8; NONCE_BYTES], SecureError> {
    let mut nonce = [0u8; NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SecureError::Random)?;
    Ok(nonce)
}

/// A blocking authenticated connection, as a peer opens it: for tools and tests that speak
/// to a node as a member of the ring.
pub struct BlockingChannel {
    pub stream: TcpStream,
    pub channel: Channel,
    raw: BytesMut,
    plain: BytesMut,
}

/// Opens an authenticated connection to `addr` with the keyring's primary key.
///
/// # Errors
/// The connection, the handshake (a refusal says why), or the peer's proof failed.
pub fn connect_blocking(addr: std::net::SocketAddr, keyring: &Keyring) -> std::io::Result<BlockingChannel> {
    let io_err = |e: SecureError| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string());
    let mut stream = TcpStream::connect(addr)?;
    let mut hello = Vec::new();
    let initiator = Initiator::start(keyring, &mut hello).map_err(io_err)?;
    stream.write_all(&hello)?;
    let mut raw = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&chunk[..n]);
        if let Some(channel) = initiator.finish(&mut raw).map_err(io_err)? {
            return Ok(BlockingChannel {
                stream,
                channel,
                raw,
                plain: BytesMut::new(),
            });
        }
    }
}

impl BlockingChannel {
    /// Seals `plain` and writes the records; returns the bytes that went on the wire (a test
    /// may replay them).
    pub fn send(&mut self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.channel.seal(plain, &mut out);
        self.stream.write_all(&out)?;
        Ok(out)
    }

    /// Reads until one whole frame has been opened, and decodes it.
    pub fn recv_frame(&mut self) -> std::io::Result<chordkv_protocol::Frame> {
        let mut chunk = [0u8; 4096];
        loop {
            self.channel
                .open(&mut self.raw, &mut self.plain)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            if let Some(frame) = chordkv_protocol::decode(&mut self.plain)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?
            {
                return Ok(frame);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::generate_key;

    fn pair(ring_a: &Keyring, ring_b: &Keyring) -> Result<(Channel, Channel), SecureError> {
        let mut hello = Vec::new();
        let initiator = Initiator::start(ring_a, &mut hello)?;
        let mut buf = BytesMut::from(&hello[..]);
        let mut reply = Vec::new();
        let responder = respond(ring_b, &mut buf, &mut reply)?.expect("whole hello");
        let mut buf = BytesMut::from(&reply[..]);
        let initiator = initiator.finish(&mut buf)?.expect("whole reply");
        Ok((initiator, responder))
    }

    #[test]
    fn records_open_once_in_order_and_only_with_the_key() {
        let ring = Keyring::parse(&generate_key()).unwrap();
        let (mut a, mut b) = pair(&ring, &ring).unwrap();
        let big = vec![7u8; MAX_RECORD_PLAINTEXT * 2 + 5];
        let mut wire = Vec::new();
        a.seal(b"hello", &mut wire);
        a.seal(&big, &mut wire);
        let mut raw = BytesMut::from(&wire[..]);
        let mut plain = BytesMut::new();
        b.open(&mut raw, &mut plain).unwrap();
        assert_eq!(&plain[..5], b"hello");
        assert_eq!(&plain[5..], &big[..]);

        // Replayed: the same bytes again fail (the nonce counts on).
        let mut raw = BytesMut::from(&wire[..]);
        assert_eq!(b.open(&mut raw, &mut plain), Err(SecureError::BadRecord));

        // Reordered: the second record first fails.
        let (mut a, mut b) = pair(&ring, &ring).unwrap();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        a.seal(b"one", &mut one);
        a.seal(b"two", &mut two);
        let mut raw = BytesMut::from(&two[..]);
        assert_eq!(b.open(&mut raw, &mut plain), Err(SecureError::BadRecord));

        // Another connection's record fails.
        let (_, mut c) = pair(&ring, &ring).unwrap();
        let mut raw = BytesMut::from(&one[..]);
        assert_eq!(c.open(&mut raw, &mut plain), Err(SecureError::BadRecord));

        // A flipped bit fails.
        let (mut a, mut b) = pair(&ring, &ring).unwrap();
        let mut wire = Vec::new();
        a.seal(b"value", &mut wire);
        wire[6] ^= 1;
        let mut raw = BytesMut::from(&wire[..]);
        assert_eq!(b.open(&mut raw, &mut plain), Err(SecureError::BadRecord));
    }

    #[test]
    fn a_stranger_is_refused_and_a_rotation_keyring_accepts_both_keys() {
        let ours = generate_key();
        let theirs = generate_key();
        let ring = Keyring::parse(&ours).unwrap();
        let stranger = Keyring::parse(&theirs).unwrap();
        assert!(matches!(pair(&stranger, &ring), Err(SecureError::UnknownKey(_))));
        // During a rotation a node holding [new, old] talks to one holding [old, new].
        let rotating = Keyring::parse(&format!("{theirs}\n{ours}")).unwrap();
        let (mut a, mut b) = pair(&rotating, &Keyring::parse(&format!("{ours}\n{theirs}")).unwrap()).unwrap();
        let mut wire = Vec::new();
        a.seal(b"x", &mut wire);
        let (mut raw, mut plain) = (BytesMut::from(&wire[..]), BytesMut::new());
        b.open(&mut raw, &mut plain).unwrap();
        assert_eq!(&plain[..], b"x");
    }

    #[test]
    fn a_responder_that_lies_about_the_key_is_caught() {
        let ring = Keyring::parse(&generate_key()).unwrap();
        let mut hello = Vec::new();
        let initiator = Initiator::start(&ring, &mut hello).unwrap();
        let mut reply = Vec::new();
        Handshake::HelloOk {
            nonce: [1; 32],
            proof: [2; 32],
        }
        .encode(&mut reply);
        let mut buf = BytesMut::from(&reply[..]);
        assert_eq!(initiator.finish(&mut buf).err(), Some(SecureError::BadProof));
    }
}
