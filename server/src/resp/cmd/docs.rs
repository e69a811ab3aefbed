//! `COMMAND DOCS`: a summary, the Redis version that introduced it, and its group for every
//! command of [`COMMANDS`](super::COMMANDS) (redis.io/docs/latest/commands/command-docs; the
//! groups are Redis' own). Argument lists are not served: clients that read them for hints
//! (redis-cli) do without.

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};

/// One command's documentation: name, group, since, summary.
type Doc = (&'static str, &'static str, &'static str, &'static str);

/// The documentation of every command [`COMMANDS`](super::COMMANDS) lists (a test checks that
/// the two agree), with chordkv's differences from Redis said in the summary.
#[rustfmt::skip]
const DOCS: &[Doc] = &[
    ("get", "string", "1.0.0", "Returns the string value of a key."),
    ("set", "string", "1.0.0", "Sets the string value of a key, ignoring its type; with options, sets it only if it exists (XX) or not (NX), with an expiry (EX, PX, EXAT, PXAT, KEEPTTL), returning the old value (GET)."),
    ("del", "generic", "1.0.0", "Deletes one or more keys, each at its own owner."),
    ("exists", "generic", "1.0.0", "Counts how many of the given keys exist."),
    ("unlink", "generic", "4.0.0", "Deletes one or more keys (as DEL)."),
    ("mget", "string", "1.0.0", "Returns the values of one or more keys."),
    ("mset", "string", "1.0.1", "Sets the values of one or more keys; each key is its own write (not atomic across owners)."),
    ("scan", "generic", "2.8.0", "Iterates over the keys of the whole ring with a cursor stable across joins and leaves."),
    ("keys", "generic", "1.0.0", "Returns every key of the ring that matches a pattern."),
    ("randomkey", "generic", "1.0.0", "Returns a random key of the ring."),
    ("ping", "connection", "1.0.0", "Returns the server's liveliness response."),
    ("echo", "connection", "1.0.0", "Returns the given string."),
    ("info", "server", "1.0.0", "Returns information and statistics about this node."),
    ("dbsize", "server", "1.0.0", "Returns the number of keys of the whole ring."),
    ("flushall", "server", "1.0.0", "Deletes every key of the ring (tombstones: no flushed key comes back)."),
    ("flushdb", "server", "1.0.0", "Deletes every key of the ring (one database: as FLUSHALL)."),
    ("function", "scripting", "7.0.0", "FUNCTION FLUSH and LIST only: chordkv runs no functions."),
    ("command", "server", "2.8.13", "Returns detailed information about the commands chordkv serves."),
    ("client", "connection", "2.4.0", "Manages client connections: ID, LIST, KILL, SETNAME, GETNAME, SETINFO, NO-EVICT."),
    ("config", "server", "2.0.0", "CONFIG GET of the node's limits and settings; CONFIG SET is refused."),
    ("select", "connection", "1.0.0", "Selects database 0, the only one."),
    ("hello", "connection", "6.0.0", "Handshakes with the server: protocol version (2 or 3), AUTH and SETNAME."),
    ("auth", "connection", "1.0.0", "Authenticates the connection."),
    ("quit", "connection", "1.0.0", "Closes the connection."),
    ("reset", "connection", "6.2.0", "Resets the connection: protocol, name, transaction, watched keys, login."),
    ("time", "server", "2.6.0", "Returns the node's time."),
    ("multi", "transactions", "1.2.0", "Starts a transaction: its commands run atomically at the owner of their one hash tag."),
    ("exec", "transactions", "1.2.0", "Runs the queued commands at their keys' owner, or refuses them all (CROSSSLOT, EXECABORT)."),
    ("discard", "transactions", "2.0.0", "Discards a transaction."),
    ("watch", "transactions", "2.2.0", "Watches keys: EXEC aborts if any of their versions changed."),
    ("unwatch", "transactions", "2.2.0", "Forgets every watched key."),
    ("setnx", "string", "1.0.0", "Sets the string value of a key only when the key does not exist."),
    ("getset", "string", "1.0.0", "Returns the previous string value of a key after setting it to a new value."),
    ("getdel", "string", "6.2.0", "Returns the string value of a key after deleting the key."),
    ("type", "generic", "1.0.0", "Determines the type of value stored at a key (string or none)."),
    ("msetnx", "string", "1.0.1", "Sets the values of keys of one hash tag only when none of the keys exists."),
    ("incr", "string", "1.0.0", "Increments the integer value of a key by one, at its owner."),
    ("decr", "string", "1.0.0", "Decrements the integer value of a key by one, at its owner."),
    ("incrby", "string", "1.0.0", "Increments the integer value of a key by a number, at its owner."),
    ("decrby", "string", "1.0.0", "Decrements a number from the integer value of a key, at its owner."),
    ("incrbyfloat", "string", "2.6.0", "Increments the floating point value of a key by a number, at its owner."),
    ("append", "string", "2.0.0", "Appends a string to the value of a key; creates the key if it does not exist."),
    ("strlen", "string", "2.2.0", "Returns the length of a string value."),
    ("setrange", "string", "2.2.0", "Overwrites part of a string value from an offset; creates the key if it does not exist."),
    ("getrange", "string", "2.4.0", "Returns a substring of the string stored at a key."),
    ("substr", "string", "1.0.0", "Returns a substring from a string value (as GETRANGE)."),
    ("setbit", "bitmap", "2.2.0", "Sets or clears the bit at an offset of the string value; creates the key if it does not exist."),
    ("getbit", "bitmap", "2.2.0", "Returns a bit value by offset."),
    ("bitcount", "bitmap", "2.6.0", "Counts the set bits in a string, in a range of bytes or bits."),
    ("lcs", "string", "7.0.0", "Finds the longest common substring of two keys of one hash tag."),
    ("rename", "generic", "1.0.0", "Renames a key, overwriting the destination (one hash tag)."),
    ("renamenx", "generic", "1.0.0", "Renames a key only when the target key name does not exist (one hash tag)."),
    ("copy", "generic", "6.2.0", "Copies the value of a key to a new key (one hash tag)."),
    ("setex", "string", "2.0.0", "Sets the string value and expiration time, in seconds, of a key."),
    ("psetex", "string", "2.6.0", "Sets the string value and expiration time, in milliseconds, of a key."),
    ("getex", "string", "6.2.0", "Returns the string value of a key after setting or removing its expiration time."),
    ("expire", "generic", "1.0.0", "Sets the expiration time of a key in seconds (NX, XX, GT, LT)."),
    ("pexpire", "generic", "2.6.0", "Sets the expiration time of a key in milliseconds (NX, XX, GT, LT)."),
    ("expireat", "generic", "1.2.0", "Sets the expiration time of a key to a Unix timestamp in seconds."),
    ("pexpireat", "generic", "2.6.0", "Sets the expiration time of a key to a Unix timestamp in milliseconds."),
    ("ttl", "generic", "1.0.0", "Returns the expiration time in seconds of a key."),
    ("pttl", "generic", "2.6.0", "Returns the expiration time in milliseconds of a key."),
    ("expiretime", "generic", "7.0.0", "Returns the expiration time of a key as a Unix timestamp in seconds."),
    ("pexpiretime", "generic", "7.0.0", "Returns the expiration time of a key as a Unix timestamp in milliseconds."),
    ("persist", "generic", "2.2.0", "Removes the expiration time of a key."),
];

fn doc_of(name: &[u8]) -> Option<&'static Doc> {
    DOCS.iter().find(|d| d.0.as_bytes().eq_ignore_ascii_case(name))
}

/// `COMMAND DOCS [name ...]`: a map from each command named (every command without a name; an
/// unknown name is left out, as Redis does) to its `summary`, `since` and `group`.
pub(super) fn write_docs(names: &[Bytes], proto: Proto, out: &mut Vec<u8>) {
    let docs: Vec<&Doc> = if names.is_empty() {
        DOCS.iter().collect()
    } else {
        names.iter().filter_map(|n| doc_of(n)).collect()
    };
    resp::write_map_len_in(out, docs.len(), proto);
    for (name, group, since, summary) in docs {
        resp::write_bulk(out, name.as_bytes());
        resp::write_map_len_in(out, 3, proto);
        for (field, value) in [("summary", summary), ("since", since), ("group", group)] {
            resp::write_bulk(out, field.as_bytes());
            resp::write_bulk(out, value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_its_docs_and_no_more() {
        for c in super::super::COMMANDS {
            assert!(doc_of(c.name.as_bytes()).is_some(), "no docs for {}", c.name);
        }
        for d in DOCS {
            assert!(
                super::super::find(d.0.as_bytes()).is_some(),
                "docs of {}, not served",
                d.0
            );
        }
        assert_eq!(DOCS.len(), super::super::COMMANDS.len());
    }

    #[test]
    fn docs_are_a_map_of_maps() {
        let mut out = Vec::new();
        write_docs(
            &[Bytes::from_static(b"GET"), Bytes::from_static(b"nosuch")],
            Proto::Resp3,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "%1\r\n$3\r\nget\r\n%3\r\n$7\r\nsummary\r\n$34\r\nReturns the string value of a key.\r\n\
             $5\r\nsince\r\n$5\r\n1.0.0\r\n$5\r\ngroup\r\n$6\r\nstring\r\n"
        );
        let mut out = Vec::new();
        write_docs(&[], Proto::Resp2, &mut out);
        assert!(out.starts_with(format!("*{}\r\n", 2 * DOCS.len()).as_bytes()));
    }
}
