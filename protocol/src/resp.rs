//! RESP2 and RESP3, the Redis serialization protocol, as far as a server needs it: decoding the
//! commands clients send and encoding the replies they expect. Redis clients (redis-cli,
//! redis-benchmark, client libraries) talk to a chordkv node through this; see
//! `server/src/resp/` for what the commands do.
//!
//! # Requests
//!
//! A client sends each command either as an array of bulk strings (every library does) or as
//! one *inline* line of words (what `telnet` or `redis-cli` in a pipe send):
//!
//! ```text
//!  multibulk   *<count>\r\n  then count times  $<len>\r\n<len bytes>\r\n
//!              *2\r\n$3\r\nGET\r\n$1\r\nk\r\n                     -> ["GET", "k"]
//!  inline      words separated by spaces, ended by \n (a \r before it is dropped);
//!              "..." with \n \r \t \b \a \\ \" \xHH escapes, '...' with \' only
//!              GET "a key"\r\n                                   -> ["GET", "a key"]
//! ```
//!
//! An empty array (`*0`, `*-1`) or an empty line is no command: it is consumed and skipped, as
//! Redis does.
//!
//! # Decoding rules (the same as [`crate::frame`]'s)
//!
//! [`decode`] first *checks* that a whole command is buffered, walking the headers without
//! allocating, and returns `Ok(None)` when it is not; only then does it cut the command off the
//! buffer and slice its arguments out of it without copying. Every count and length read from
//! the wire is checked against a named maximum ([`MAX_ARRAY_LEN`], [`MAX_BULK_BYTES`],
//! [`MAX_INLINE_BYTES`], [`MAX_NUMBER_LINE_BYTES`]) before anything is reserved for it, so a
//! tiny request claiming a huge length costs nothing. The decoder indexes only through checked
//! accessors and never panics on any input; a [`RespError`] means the client does not speak
//! RESP and its connection should be closed after the error reply. The errors' texts are
//! Redis' own (`Protocol error: invalid bulk length`, ...).
//!
//! # Replies
//!
//! The `write_*` functions append one reply to a buffer:
//!
//! ```text
//!  simple string  +OK\r\n          error    -ERR unknown command 'x'\r\n
//!  integer        :42\r\n          bulk     $3\r\nabc\r\n       null bulk  $-1\r\n
//!  array header   *2\r\n (then the elements)                  null array $-1... (*-1\r\n)
//! ```
//!
//! A connection speaks RESP2 until it sends `HELLO 3` ([`Proto`]); the types RESP3 adds
//! (redis.io/docs/latest/develop/reference/protocol-spec, "RESP3 types") are written by the
//! `write_*_in` functions, which fall back to what Redis itself sends a RESP2 client:
//!
//! ```text
//!                 RESP3                              RESP2
//!  null           _\r\n                              $-1\r\n (or *-1\r\n for a missing array)
//!  map header     %2\r\n (then key, value, ...)       *4\r\n (a flat array)
//!  verbatim       =9\r\ntxt:hello\r\n                 $5\r\nhello\r\n
//! ```
//!
//! (No command chordkv serves answers a double, a boolean, a set or a push in Redis.)

use bytes::{Buf, Bytes, BytesMut};

use crate::limits::MAX_VALUE_BYTES;

/// Longest bulk string in a request unless the server asks for less ([`decode_limited`]): the
/// binary protocol's longest value, so anything a RESP client can send fits a chordkv frame.
pub const MAX_BULK_BYTES: usize = MAX_VALUE_BYTES;
/// The longest bulk string whose bytes a server skips to answer an error and keep the
/// connection (4 GiB). A bulk over the decoder's maximum and within this is
/// [`RespError::BulkTooLarge`]; over it, [`RespError::InvalidBulkLength`] (and the connection
/// is closed, as Redis closes one whose bulk is over `proto-max-bulk-len`).
pub const MAX_SKIPPED_BULK_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Most arguments in one command (Redis' own limit is the same, 1024 * 1024).
pub const MAX_ARRAY_LEN: usize = 1024 * 1024;
/// Longest inline command line, its newline included (Redis' `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Longest `*<count>` or `$<len>` header line, `\r\n` excluded: a sign and 19 digits fit.
pub const MAX_NUMBER_LINE_BYTES: usize = 20;

/// Why the bytes received are not RESP. The connection is closed after replying with the
/// error's text (prefixed by `ERR `).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A `*` line that is not a number, or a count over [`MAX_ARRAY_LEN`].
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$` line that is not a number, negative, or over [`MAX_BULK_BYTES`].
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An element of a request array that is not a bulk string.
    #[error("Protocol error: expected '$', got '{}'", printable(*.0))]
    ExpectedBulk(u8),
    /// A header line longer than [`MAX_NUMBER_LINE_BYTES`], or not ended by `\r\n`.
    #[error("Protocol error: too big mbulk count string")]
    NumberLineTooLong,
    /// Bulk data not followed by `\r\n`.
    #[error("Protocol error: expected CRLF after bulk data")]
    MissingCrlf,
    /// No newline within [`MAX_INLINE_BYTES`] of an inline command.
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// An inline command with an unclosed quote, or a closing quote not followed by a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A bulk string over the decoder's maximum (`max`) and at most
    /// [`MAX_SKIPPED_BULK_BYTES`]: still
    /// RESP, so the connection can be kept. The command's bytes up to this bulk's data end at
    /// `data_from` (from the front of the buffer); the server skips `len + 2` bytes of data and
    /// CRLF, then the `args_after` arguments after it (see [`bulk_header`]), and answers the
    /// error.
    #[error("value of {len} bytes is over the node's maximum of {max} bytes (proto-max-bulk-len, --max-value-bytes)")]
    BulkTooLarge {
        len: u64,
        max: usize,
        data_from: usize,
        args_after: usize,
    },
}

fn printable(b: u8) -> String {
    if b.is_ascii_graphic() || b == b' ' {
        char::from(b).to_string()
    } else {
        format!("\\x{b:02x}")
    }
}

/// Arguments whose places [`decode`] remembers during its check; a longer command is walked
/// a second time to cut them out.
const NEAR_ARGS: usize = 8;

/// Cuts the next command off the front of `buf` and returns its arguments (never empty),
/// `Ok(None)` when no whole command is buffered yet (nothing is consumed then), or an error
/// when the bytes are not RESP. Empty commands are consumed and skipped.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
    decode_limited(buf, MAX_BULK_BYTES)
}

/// [`decode`] with bulk strings of at most `max_bulk` bytes (a node's `--max-value-bytes`,
/// at most [`MAX_BULK_BYTES`]); a longer one is [`RespError::BulkTooLarge`].
pub fn decode_limited(buf: &mut BytesMut, max_bulk: usize) -> Result<Option<Vec<Bytes>>, RespError> {
    let mut args = Vec::new();
    Ok(decode_limited_into(buf, max_bulk, &mut args)?.then_some(args))
}

/// [`decode_limited`] into a vector the caller keeps (emptied first), so that a server
/// reading command after command allocates no vector per command: `Ok(true)` when `args`
/// holds the next command's arguments (never empty), `Ok(false)` when no whole command is
/// buffered yet (`args` is then empty and nothing is consumed).
pub fn decode_limited_into(
    buf: &mut BytesMut,
    max_bulk: usize,
    args: &mut Vec<Bytes>,
) -> Result<bool, RespError> {
    let max_bulk = max_bulk.min(MAX_BULK_BYTES);
    args.clear();
    loop {
        let Some(&first) = buf.first() else {
            return Ok(false);
        };
        if first == b'*' {
            // The check keeps the first arguments' places on the stack (most commands have
            // few), so they need no second walk; it allocates nothing either way.
            let mut near = [(0usize, 0usize); NEAR_ARGS];
            let mut seen = 0usize;
            let Some((len, count)) = walk_multibulk(buf, max_bulk, |start, end| {
                if let Some(slot) = near.get_mut(seen) {
                    *slot = (start, end);
                }
                seen += 1;
            })?
            else {
                return Ok(false);
            };
            let mut command = buf.split_to(len).freeze();
            args.reserve(count);
            if count <= NEAR_ARGS {
                // (`*0` has no argument.)
                if let Some((&(start, end), first)) = near[..count].split_last() {
                    args.extend(first.iter().map(|&(start, end)| command.slice(start..end)));
                    // The last argument is the command's own handle, narrowed: one reference
                    // count taken and dropped fewer per command (atomic operations, in the
                    // profile of a pipeline of GETs).
                    command.truncate(end);
                    command.advance(start);
                    args.push(command);
                }
            } else {
                // The same walk over the same bytes: it succeeds again.
                walk_multibulk(&command, max_bulk, |start, end| {
                    args.push(command.slice(start..end))
                })?;
            }
        } else {
            let window = &buf[..buf.len().min(MAX_INLINE_BYTES)];
            let Some(newline) = window.iter().position(|&b| b == b'\n') else {
                if buf.len() >= MAX_INLINE_BYTES {
                    return Err(RespError::InlineTooLong);
                }
                return Ok(false);
            };
            let line = buf.split_to(newline + 1);
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            *args = split_inline(text)?;
        }
        if !args.is_empty() {
            return Ok(true);
        }
    }
}

/// Walks one multibulk request at the front of `bytes` (which starts with `*`), calling
/// `on_arg(start, end)` for each argument's data, and returns `(bytes used, arguments)`, or
/// `None` if it is incomplete. Allocates nothing.
fn walk_multibulk(
    bytes: &[u8],
    max_bulk: usize,
    mut on_arg: impl FnMut(usize, usize),
) -> Result<Option<(usize, usize)>, RespError> {
    let Some((count, mut pos)) = number_line(bytes, 1)? else {
        return Ok(None);
    };
    let count = match count {
        Some(n) if n <= 0 => return Ok(Some((pos, 0))),
        Some(n) if n as u64 <= MAX_ARRAY_LEN as u64 => n as usize,
        _ => return Err(RespError::InvalidMultibulkLength),
    };
    for i in 0..count {
        let Some(&tag) = bytes.get(pos) else {
            return Ok(None);
        };
        if tag != b'$' {
            return Err(RespError::ExpectedBulk(tag));
        }
        let Some((len, after)) = number_line(bytes, pos + 1)? else {
            return Ok(None);
        };
        let len = match len {
            Some(n) if n >= 0 && n as u64 <= max_bulk as u64 => n as usize,
            Some(n) if n >= 0 && n as u64 <= MAX_SKIPPED_BULK_BYTES => {
                return Err(RespError::BulkTooLarge {
                    len: n as u64,
                    max: max_bulk,
                    data_from: after,
                    args_after: count - i - 1,
                })
            }
            _ => return Err(RespError::InvalidBulkLength),
        };
        // `after + len + 2` cannot overflow: both terms are far below usize::MAX.
        let end = after + len;
        let Some(crlf) = bytes.get(end..end + 2) else {
            return Ok(None);
        };
        if crlf != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        on_arg(after, end);
        pos = end + 2;
    }
    Ok(Some((pos, count)))
}

/// The `$<len>\r\n` header of a bulk string at the front of `bytes`, for a server skipping an
/// argument: `(len, header bytes)`, `Ok(None)` when the line is not complete, an error when it
/// is not a bulk header or `len` is over [`MAX_SKIPPED_BULK_BYTES`].
pub fn bulk_header(bytes: &[u8]) -> Result<Option<(u64, usize)>, RespError> {
    let Some(&tag) = bytes.first() else {
        return Ok(None);
    };
    if tag != b'$' {
        return Err(RespError::ExpectedBulk(tag));
    }
    match number_line(bytes, 1)? {
        None => Ok(None),
        Some((Some(n), used)) if n >= 0 && n as u64 <= MAX_SKIPPED_BULK_BYTES => Ok(Some((n as u64, used))),
        Some(_) => Err(RespError::InvalidBulkLength),
    }
}

/// Reads the number on the header line that starts at `start` (after its `*` or `$`) and
/// ends with `\r\n`: `Ok(None)` if the line is not complete yet, `Some(None)` as the number if
/// it is not one (or overflows), and the position after the line.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn number_line(bytes: &[u8], start: usize) -> Result<Option<(Option<i64>, usize)>, RespError> {
    // The common case in one pass: 1 to 18 digits and `\r\n` (no overflow possible); any
    // other line takes the general path below, which gives the same answer for this one.
    let rest = bytes.get(start..).unwrap_or_default();
    let mut n = 0i64;
    let mut digits = 0;
    for &b in rest.iter().take(18) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        n = n * 10 + i64::from(d);
        digits += 1;
    }
    if digits > 0 && rest.get(digits..digits + 2) == Some(b"\r\n") {
        return Ok(Some((Some(n), start + digits + 2)));
    }
    number_line_general(bytes, start)
}

/// [`number_line`] for any line: finds the `\r`, then parses what comes before it.
#[allow(clippy::type_complexity)]
#[cold]
#[inline(never)]
fn number_line_general(bytes: &[u8], start: usize) -> Result<Option<(Option<i64>, usize)>, RespError> {
    let rest = bytes.get(start..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_NUMBER_LINE_BYTES + 2)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if rest.len() >= MAX_NUMBER_LINE_BYTES + 2 {
            return Err(RespError::NumberLineTooLong);
        }
        return Ok(None);
    };
    match window.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(RespError::NumberLineTooLong),
    }
    Ok(Some((parse_i64(&window[..cr]), start + cr + 2)))
}

/// An optional `-` and 1 to 19 decimal digits, without overflow.
fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// Splits an inline command line into words the way Redis' `sdssplitargs` does.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, RespError> {
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while line.get(p).is_some_and(|&c| is_space(c)) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(args);
        }
        let mut word = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let c = line.get(p).copied();
            if in_double {
                match c {
                    None => return Err(RespError::UnbalancedQuotes),
                    Some(b'\\') => {
                        let next = line.get(p + 1).copied();
                        let hex = (line.get(p + 2).copied(), line.get(p + 3).copied());
                        match (next, hex) {
                            (Some(b'x'), (Some(h), Some(l)))
                                if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() =>
                            {
                                word.push(hex_value(h) * 16 + hex_value(l));
                                p += 3;
                            }
                            (Some(e), _) => {
                                word.push(match e {
                                    b'n' => b'\n',
                                    b'r' => b'\r',
                                    b't' => b'\t',
                                    b'b' => 0x08,
                                    b'a' => 0x07,
                                    other => other,
                                });
                                p += 1;
                            }
                            (None, _) => word.push(b'\\'),
                        }
                    }
                    Some(b'"') => {
                        // A closing quote must end the word.
                        if line.get(p + 1).is_some_and(|&n| !is_space(n)) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        p += 1;
                        break;
                    }
                    Some(other) => word.push(other),
                }
            } else if in_single {
                match c {
                    None => return Err(RespError::UnbalancedQuotes),
                    Some(b'\\') if line.get(p + 1) == Some(&b'\'') => {
                        word.push(b'\'');
                        p += 1;
                    }
                    Some(b'\'') => {
                        if line.get(p + 1).is_some_and(|&n| !is_space(n)) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        p += 1;
                        break;
                    }
                    Some(other) => word.push(other),
                }
            } else {
                match c {
                    // Every byte that ends a word is one the loop above skips, so each word
                    // advances `p`.
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(other) => word.push(other),
                }
            }
            p += 1;
        }
        args.push(Bytes::from(word));
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

// --- encoding ----------------------------------------------------------------------------

/// Appends a command as a multibulk array (what clients send).
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    write_array_len(out, args.len());
    for arg in args {
        write_bulk(out, arg.as_ref());
    }
}

/// `+text\r\n`. Line breaks in `text` become spaces (a simple string cannot hold them).
pub fn write_simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    push_line(out, text.as_bytes());
}

/// `+OK\r\n`, the answer of every write that succeeded: one copy of a constant.
#[inline]
pub fn write_ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// `-text\r\n`, where `text` starts with the error code, e.g. `ERR syntax error`. Line breaks
/// become spaces.
pub fn write_error(out: &mut Vec<u8>, text: &str) {
    out.push(b'-');
    push_line(out, text.as_bytes());
}

/// `:n\r\n`.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_i64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `$len\r\ndata\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, data: &[u8]) {
    // One reservation for the whole reply: each write below is then a copy, not a check of
    // the room left and a possible growth.
    out.reserve(data.len() + 25);
    out.push(b'$');
    push_u64(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `$len\r\n`: a bulk string's header, for a caller that writes its `len` bytes in pieces and
/// then the closing `\r\n` itself.
pub fn write_bulk_len(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    push_u64(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// The null bulk string, `$-1\r\n` (a missing key).
pub fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*n\r\n`, to be followed by `n` replies.
pub fn write_array_len(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_u64(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// The RESP version a connection speaks: RESP2 until `HELLO 3`, RESP2 again after `HELLO 2`
/// (redis.io/docs/latest/commands/hello).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Proto {
    #[default]
    Resp2,
    Resp3,
}

impl Proto {
    /// 2 or 3, as HELLO's `proto` field and CLIENT LIST's `resp=` give it.
    pub fn version(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

/// A null: `_\r\n` in RESP3, the null bulk string `$-1\r\n` in RESP2.
pub fn write_null_in(out: &mut Vec<u8>, proto: Proto) {
    match proto {
        Proto::Resp2 => write_null(out),
        Proto::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// A missing array (COMMAND INFO of an unknown command): `_\r\n` in RESP3, `*-1\r\n` in RESP2.
pub fn write_null_array_in(out: &mut Vec<u8>, proto: Proto) {
    match proto {
        Proto::Resp2 => out.extend_from_slice(b"*-1\r\n"),
        Proto::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// The header of a map of `n` pairs, to be followed by key, value, key, value ...: `%n\r\n`
/// in RESP3, a flat array of `2n` elements in RESP2.
pub fn write_map_len_in(out: &mut Vec<u8>, n: usize, proto: Proto) {
    match proto {
        Proto::Resp2 => write_array_len(out, 2 * n),
        Proto::Resp3 => {
            out.push(b'%');
            push_u64(out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Text for a human (INFO, CLIENT LIST): a verbatim string of format `txt` in RESP3
/// (`=len\r\ntxt:text\r\n`), a bulk string in RESP2.
pub fn write_verbatim_in(out: &mut Vec<u8>, text: &[u8], proto: Proto) {
    match proto {
        Proto::Resp2 => write_bulk(out, text),
        Proto::Resp3 => {
            out.push(b'=');
            push_u64(out, text.len() as u64 + 4);
            out.extend_from_slice(b"\r\ntxt:");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn push_line(out: &mut Vec<u8>, text: &[u8]) {
    if memchr::memchr2(b'\r', b'\n', text).is_none() {
        // The usual line: copied whole (a vector search, not a test per byte).
        out.extend_from_slice(text);
    } else {
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    }
    out.extend_from_slice(b"\r\n");
}

// Decimal digits by the itoa crate (two digits a step from a table; the standard crate for
// it, already in the build): every bulk reply writes its length.
fn push_i64(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{feed_random_inputs, Rng};

    /// A simple string or error cannot hold a line break: each becomes a space, whether the
    /// line has none (copied whole) or several.
    #[test]
    fn simple_lines_carry_no_line_breaks() {
        let mut out = Vec::new();
        write_simple(&mut out, "OK");
        write_ok(&mut out);
        write_simple(&mut out, "a\r\nb\nc\r");
        write_error(&mut out, "ERR bad\r\n-ERR forged");
        assert_eq!(out, b"+OK\r\n+OK\r\n+a  b c \r\n-ERR bad  -ERR forged\r\n");
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, RespError> {
        let mut buf = BytesMut::from(bytes);
        let mut commands = Vec::new();
        while let Some(args) = decode(&mut buf)? {
            commands.push(args.iter().map(|a| a.to_vec()).collect());
        }
        assert!(
            buf.is_empty() || decode(&mut buf.clone()) == Ok(None),
            "leftover must be an incomplete command"
        );
        Ok(commands)
    }

    fn words(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    /// The one-pass reading of a header line answers exactly as the general one, on lines of
    /// digits of every length around its 18-digit limit and on random bytes of digits, signs,
    /// CR and LF.
    #[test]
    fn a_number_line_reads_the_same_by_either_path() {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for len in 0..=22 {
            let digits: Vec<u8> = (0..len).map(|i| b'1' + (i % 9) as u8).collect();
            for end in [&b"\r\n"[..], b"\r", b"", b"\rx", b"\n", b"x\r\n"] {
                lines.push([&digits[..], end].concat());
                lines.push([&b"-"[..], &digits, end].concat());
                lines.push([&b"9"[..], &digits, end].concat());
            }
        }
        lines.push(b"9999999999999999999\r\n".to_vec()); // 19 digits: over i64::MAX
        lines.push(b"999999999999999999\r\n".to_vec());
        let mut rng = Rng(7);
        let alphabet = b"0123456789-\r\n+x";
        for _ in 0..20_000 {
            let n = rng.below(24);
            lines.push((0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect());
        }
        for line in &lines {
            for start in 0..2.min(line.len() + 1) {
                assert_eq!(
                    number_line(line, start),
                    number_line_general(line, start),
                    "{:?} from {start}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }

    #[test]
    fn multibulk_commands() {
        let got =
            decode_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n").unwrap();
        assert_eq!(got, vec![words(&["GET", "k"]), words(&["SET", "k", ""])]);
        // Binary-safe: CR, LF and NUL inside bulk data.
        let got = decode_all(b"*1\r\n$4\r\n\r\n\0x\r\n").unwrap();
        assert_eq!(got, vec![vec![b"\r\n\0x".to_vec()]]);
    }

    #[test]
    fn incomplete_commands_consume_nothing() {
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let inline = b"PING hello";
        let mut buf = BytesMut::from(&inline[..]);
        assert_eq!(decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), inline.len());
    }

    #[test]
    fn empty_commands_are_skipped() {
        assert_eq!(
            decode_all(b"*0\r\n*-1\r\n\r\n   \n").unwrap(),
            Vec::<Vec<Vec<u8>>>::new()
        );
        assert_eq!(decode_all(b"\r\nPING\r\n*0\r\n").unwrap(), vec![words(&["PING"])]);
    }

    #[test]
    fn inline_commands() {
        assert_eq!(decode_all(b"PING\r\n").unwrap(), vec![words(&["PING"])]);
        assert_eq!(decode_all(b"PING\n").unwrap(), vec![words(&["PING"])]);
        assert_eq!(
            decode_all(b"  set  k\t v  \r\nget k\r\n").unwrap(),
            vec![words(&["set", "k", "v"]), words(&["get", "k"])]
        );
        assert_eq!(
            decode_all(b"SET \"a key\" 'it\\'s' \"\\x41\\n\\\"\" \"\"\r\n").unwrap(),
            vec![vec![
                b"SET".to_vec(),
                b"a key".to_vec(),
                b"it's".to_vec(),
                b"A\n\"".to_vec(),
                b"".to_vec()
            ]]
        );
        assert_eq!(
            decode_all(b"GET a\0b\r\n").unwrap(),
            vec![words(&["GET", "a\0b"])]
        );
        assert_eq!(decode_all(b"GET \"a\r\n"), Err(RespError::UnbalancedQuotes));
        assert_eq!(decode_all(b"GET \"a\"b\r\n"), Err(RespError::UnbalancedQuotes));
        assert_eq!(decode_all(b"GET 'a\r\n"), Err(RespError::UnbalancedQuotes));
    }

    #[test]
    fn limits_are_checked_before_anything_is_reserved() {
        let too_many = format!("*{}\r\n", MAX_ARRAY_LEN + 1);
        assert_eq!(
            decode_all(too_many.as_bytes()),
            Err(RespError::InvalidMultibulkLength)
        );
        let at_limit = format!("*{MAX_ARRAY_LEN}\r\n$1\r\na\r\n");
        assert_eq!(
            decode_all(at_limit.as_bytes()),
            Ok(vec![]),
            "incomplete, not an error"
        );
        let too_long = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", MAX_BULK_BYTES + 1);
        assert_eq!(
            decode_all(too_long.as_bytes()),
            Err(RespError::BulkTooLarge {
                len: MAX_BULK_BYTES as u64 + 1,
                max: MAX_BULK_BYTES,
                data_from: too_long.len(),
                args_after: 0
            })
        );
        // A server's own maximum (--max-value-bytes) below the protocol's.
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        assert_eq!(
            decode_limited(&mut BytesMut::from(&set[..]), 4),
            Err(RespError::BulkTooLarge {
                len: 5,
                max: 4,
                data_from: set.len() - 7,
                args_after: 0
            })
        );
        assert_eq!(
            decode_limited(&mut BytesMut::from(&set[..]), 5).map(|a| a.map(|a| a.len())),
            Ok(Some(3))
        );
        let beyond = format!("*1\r\n${}\r\n", MAX_SKIPPED_BULK_BYTES + 1);
        assert_eq!(decode_all(beyond.as_bytes()), Err(RespError::InvalidBulkLength));
        assert_eq!(bulk_header(b"$12\r\nrest"), Ok(Some((12, 5))));
        assert_eq!(bulk_header(b"$12\r"), Ok(None));
        assert_eq!(bulk_header(b"+x"), Err(RespError::ExpectedBulk(b'+')));
        assert_eq!(decode_all(b"*1\r\n$-1\r\n"), Err(RespError::InvalidBulkLength));
        assert_eq!(
            decode_all(b"*1\r\n$99999999999999999999\r\n"),
            Err(RespError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$123456789012345678901234\r\n"),
            Err(RespError::NumberLineTooLong)
        );
        assert_eq!(decode_all(b"*x\r\n"), Err(RespError::InvalidMultibulkLength));
        assert_eq!(decode_all(b"*1\r\n:1\r\n"), Err(RespError::ExpectedBulk(b':')));
        assert_eq!(decode_all(b"*1\r\n$1\r\nab\r\n"), Err(RespError::MissingCrlf));
        assert_eq!(decode_all(b"*1\rx"), Err(RespError::NumberLineTooLong));
        let long_line = vec![b'a'; MAX_INLINE_BYTES];
        assert_eq!(decode_all(&long_line), Err(RespError::InlineTooLong));
        assert_eq!(
            decode_all(&long_line[1..]),
            Ok(vec![]),
            "incomplete, not an error"
        );
    }

    #[test]
    fn error_texts_are_redis_wording_and_single_line() {
        assert_eq!(
            RespError::ExpectedBulk(b'\n').to_string(),
            "Protocol error: expected '$', got '\\x0a'"
        );
        let mut out = Vec::new();
        write_error(&mut out, "ERR bad\r\nthing");
        assert_eq!(out, b"-ERR bad  thing\r\n");
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        write_simple(&mut out, "OK");
        write_integer(&mut out, -12);
        write_integer(&mut out, i64::MIN);
        write_bulk(&mut out, b"abc");
        write_null(&mut out);
        write_array_len(&mut out, 0);
        assert_eq!(
            out,
            b"+OK\r\n:-12\r\n:-9223372036854775808\r\n$3\r\nabc\r\n$-1\r\n*0\r\n".to_vec()
        );
    }

    /// Decodes until an error or an incomplete command; whatever decodes must re-encode and
    /// decode to the same arguments.
    fn feed(bytes: &[u8]) -> usize {
        let mut buf = BytesMut::from(bytes);
        let mut decoded = 0;
        while let Ok(Some(args)) = decode(&mut buf) {
            assert!(!args.is_empty());
            let mut again = Vec::new();
            encode_command(&args, &mut again);
            let mut again = BytesMut::from(&again[..]);
            assert_eq!(decode(&mut again), Ok(Some(args)));
            decoded += 1;
        }
        decoded
    }

    #[test]
    fn random_bytes_never_panic() {
        let samples: Vec<Vec<u8>> = [
            &b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n",
            b"*4\r\n$4\r\nMGET\r\n$1\r\na\r\n$0\r\n\r\n$2\r\n\r\n\r\n",
            b"PING\r\n",
            b"SET \"a b\" 'c\\'d' \"\\x41\\n\"\r\n",
            b"*0\r\n\r\n*1\r\n$4\r\nPING\r\n",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        let alphabet = b"*$\r\n-0123456789 \"'\\xabPING";
        let make = |i: usize, rng: &mut Rng, buf: &mut Vec<u8>| match i % 4 {
            // Pure noise.
            0 => rng.noise(buf, 256),
            // Noise made of the protocol's own characters, which reaches deeper.
            1 => buf.extend((0..rng.below(64)).map(|_| alphabet[rng.below(alphabet.len())])),
            // A valid request with a few bytes changed.
            2 => {
                buf.extend_from_slice(&samples[rng.below(samples.len())]);
                rng.change_bytes(buf, 3, |rng| alphabet[rng.below(alphabet.len())]);
            }
            // Valid requests, concatenated and truncated.
            _ => {
                for _ in 0..1 + rng.below(3) {
                    buf.extend_from_slice(&samples[rng.below(samples.len())]);
                }
                let cut = rng.below(buf.len() + 1);
                buf.truncate(cut);
            }
        };
        let decoded = feed_random_inputs(0x05EE_D0F4_ED15, 240_000, make, feed);
        assert!(decoded > 10_000, "only {decoded} random requests decoded");
    }

    mod prop {
        use super::super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// Up to 20 arguments: both sides of `NEAR_ARGS` (one walk, or two).
        fn args() -> impl Strategy<Value = Vec<Vec<u8>>> {
            vec(vec(any::<u8>(), 0..40), 1..20)
        }

        proptest! {
            /// Any command encodes and decodes to itself, however the bytes arrive.
            #[test]
            fn multibulk_round_trip(commands in vec(args(), 1..4), cut in any::<prop::sample::Index>()) {
                let mut wire = Vec::new();
                for c in &commands {
                    encode_command(c, &mut wire);
                }
                let cut = cut.index(wire.len() + 1);
                let mut buf = BytesMut::from(&wire[..cut]);
                let mut got = Vec::new();
                while let Some(a) = decode(&mut buf).unwrap() {
                    got.push(a);
                }
                buf.extend_from_slice(&wire[cut..]);
                while let Some(a) = decode(&mut buf).unwrap() {
                    got.push(a);
                }
                prop_assert!(buf.is_empty());
                let got: Vec<Vec<Vec<u8>>> =
                    got.iter().map(|c| c.iter().map(|a| a.to_vec()).collect()).collect();
                prop_assert_eq!(got, commands);
            }

            /// Words without spaces or quotes come back from an inline line as they were.
            #[test]
            fn inline_round_trip(words in vec("[a-zA-Z0-9:_.-]{1,12}", 1..6)) {
                let line = format!("{}\r\n", words.join(" "));
                let mut buf = BytesMut::from(line.as_bytes());
                let got = decode(&mut buf).unwrap().unwrap();
                let got: Vec<String> = got.iter().map(|a| String::from_utf8(a.to_vec()).unwrap()).collect();
                prop_assert_eq!(got, words);
                prop_assert!(buf.is_empty());
            }
        }
    }
}
