//! The commands' answers, on the cases of the Redis command reference's examples and of
//! Redis' own `tests/unit/type/string.tcl` (restated here, not copied).

use super::*;
use CommandReply::{Array, Bulk, Int, Nil, Status};

/// Runs `line` (words split on spaces; `\0` in a word is a zero byte) over `ks`.
fn r(ks: &mut Keyspace, line: &str) -> CommandReply {
    let words: Vec<Bytes> = line
        .split(' ')
        .map(|w| Bytes::from(w.replace("\\0", "\0")))
        .collect();
    run(&words, ks)
}

fn bulk(s: &str) -> CommandReply {
    Bulk(Bytes::from(s.to_string()))
}

fn is_err(reply: &CommandReply, part: &str) -> bool {
    matches!(reply, CommandReply::Error(e) if e.contains(part))
}

fn value(ks: &Keyspace, key: &str) -> Option<String> {
    ks.get(key.as_bytes())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn set_with_conditions_and_get() {
    let ks = &mut Keyspace::default();
    assert_eq!(r(ks, "SET k v1 NX"), Status("OK".into()));
    assert_eq!(r(ks, "SET k v2 NX"), Nil);
    assert_eq!(r(ks, "SET k v3 XX GET"), bulk("v1"));
    assert_eq!(r(ks, "SET other v XX"), Nil);
    assert_eq!(r(ks, "SET other v NX GET"), Nil);
    assert_eq!(value(ks, "other").as_deref(), Some("v"));
    assert_eq!(
        r(ks, "SET k v NX XX"),
        CommandReply::Error("ERR syntax error".into())
    );
    assert_eq!(value(ks, "k").as_deref(), Some("v3"));
    assert_eq!(r(ks, "SETNX k x"), Int(0));
    assert_eq!(r(ks, "SETNX n x"), Int(1));
    assert_eq!(r(ks, "GETSET n y"), bulk("x"));
    assert_eq!(r(ks, "GETSET fresh y"), Nil);
    assert_eq!(r(ks, "GETDEL n"), bulk("y"));
    assert_eq!(r(ks, "GETDEL n"), Nil);
    assert_eq!(r(ks, "TYPE n"), Status("none".into()));
    assert_eq!(r(ks, "TYPE k"), Status("string".into()));
}

#[test]
fn del_exists_mget_msetnx() {
    let ks = &mut Keyspace::default();
    assert_eq!(r(ks, "MSET a 1 b 2"), Status("OK".into()));
    assert_eq!(r(ks, "EXISTS a a b c"), Int(3));
    assert_eq!(r(ks, "MGET a c b"), Array(vec![bulk("1"), Nil, bulk("2")]));
    assert_eq!(r(ks, "DEL a a c"), Int(1));
    assert_eq!(r(ks, "UNLINK b"), Int(1));
    assert_eq!(r(ks, "MSETNX x 1 y 2"), Int(1));
    assert_eq!(r(ks, "MSETNX x 3 z 4"), Int(0));
    assert_eq!(value(ks, "z"), None);
    assert_eq!(value(ks, "x").as_deref(), Some("1"));
    assert!(is_err(&r(ks, "MSET a"), "wrong number of arguments for 'mset'"));
    assert!(is_err(&r(ks, "MSETNX a 1 b"), "wrong number"));
    assert!(is_err(&r(ks, "GET"), "wrong number"));
    assert!(is_err(&r(ks, "LPUSH l x"), "cannot run at a key's owner"));
}

#[test]
fn increments_follow_redis() {
    let ks = &mut Keyspace::default();
    assert_eq!(r(ks, "INCR novar"), Int(1));
    assert_eq!(r(ks, "INCR novar"), Int(2));
    assert_eq!(r(ks, "SET novar 100"), Status("OK".into()));
    assert_eq!(r(ks, "INCR novar"), Int(101));
    assert_eq!(r(ks, "SET novar 17179869184"), Status("OK".into()));
    assert_eq!(r(ks, "INCR novar"), Int(17179869185));
    assert_eq!(r(ks, "INCRBY novar 17179869184"), Int(34359738369));
    assert_eq!(r(ks, "DECRBY novar 17179869185"), Int(17179869184));
    assert_eq!(r(ks, "DECR fresh"), Int(-1));
    assert_eq!(r(ks, "DECRBY fresh2 1"), Int(-1));
    for bad in [" 11", "11 ", " 11 ", "+1", "01", "1.5", "x"] {
        ks.set(&Bytes::from_static(b"s"), Bytes::from(bad.to_string()));
        assert!(is_err(&r(ks, "INCR s"), "not an integer"), "{bad:?}");
    }
    assert!(is_err(&r(ks, "INCRBY novar x"), "not an integer"));
    assert_eq!(r(ks, "SET big 9223372036854775807"), Status("OK".into()));
    assert!(is_err(&r(ks, "INCR big"), "would overflow"));
    assert_eq!(value(ks, "big").as_deref(), Some("9223372036854775807"));
    assert!(is_err(
        &r(ks, "DECRBY x -9223372036854775808"),
        "decrement would overflow"
    ));
}

#[test]
fn float_increments_follow_redis() {
    let ks = &mut Keyspace::default();
    assert_eq!(r(ks, "INCRBYFLOAT novar 1"), bulk("1"));
    assert_eq!(r(ks, "INCRBYFLOAT novar 0.25"), bulk("1.25"));
    assert_eq!(r(ks, "SET f 1.5"), Status("OK".into()));
    assert_eq!(r(ks, "INCRBYFLOAT f 1.5"), bulk("3"));
    assert_eq!(r(ks, "SET f 17179869184"), Status("OK".into()));
    assert_eq!(r(ks, "INCRBYFLOAT f 1.5"), bulk("17179869185.5"));
    assert_eq!(r(ks, "SET f 17179869184"), Status("OK".into()));
    assert_eq!(r(ks, "INCRBYFLOAT f 17179869184"), bulk("34359738368"));
    assert_eq!(r(ks, "SET f 0"), Status("OK".into()));
    assert!(is_err(&r(ks, "INCRBYFLOAT f +inf"), "NaN or Infinity"));
    assert!(is_err(&r(ks, "INCRBYFLOAT f nan"), "not a valid float"));
    assert_eq!(r(ks, "SET f 1\\02"), Status("OK".into()));
    assert!(is_err(&r(ks, "INCRBYFLOAT f 1"), "not a valid float"));
    assert_eq!(r(ks, "SET z 0.5"), Status("OK".into()));
    assert_eq!(r(ks, "INCRBYFLOAT z -0.5"), bulk("0"));
}

#[test]
fn ranges_follow_redis() {
    let ks = &mut Keyspace::default();
    assert_eq!(r(ks, "SETRANGE k 0 foo"), Int(3));
    assert_eq!(value(ks, "k").as_deref(), Some("foo"));
    assert_eq!(r(ks, "SETRANGE e 0 "), Int(0));
    assert_eq!(value(ks, "e"), None, "an empty SETRANGE creates no key");
    assert_eq!(r(ks, "SETRANGE p 1 foo"), Int(4));
    assert_eq!(value(ks, "p").as_deref(), Some("\0foo"));
    assert_eq!(r(ks, "SETRANGE k 0 b"), Int(3));
    assert_eq!(r(ks, "SETRANGE k 1 b"), Int(3));
    assert_eq!(value(ks, "k").as_deref(), Some("bbo"));
    assert_eq!(r(ks, "SETRANGE k 4 bar"), Int(7));
    assert_eq!(value(ks, "k").as_deref(), Some("bbo\0bar"));
    assert!(is_err(&r(ks, "SETRANGE k -1 x"), "out of range"));
    assert!(is_err(&r(ks, "SETRANGE k 536870912 x"), "maximum allowed size"));
    // A node's own --max-value-bytes bounds what the commands make.
    let small = &mut Keyspace::new(0, []).with_max_value(8);
    assert_eq!(r(small, "APPEND a 12345678"), Int(8));
    assert!(is_err(&r(small, "APPEND a 9"), "maximum allowed size"));
    assert!(is_err(&r(small, "SETRANGE s 6 abc"), "maximum allowed size"));
    assert_eq!(r(small, "SETRANGE s 5 abc"), Int(8));
    assert!(is_err(&r(small, "SETBIT b 64 1"), "bit offset"));
    assert_eq!(r(small, "SETBIT b 63 1"), Int(0));
    assert_eq!(
        r(ks, "SET h Hello World"),
        CommandReply::Error("ERR syntax error".into())
    );
    ks.set(&Bytes::from_static(b"h"), Bytes::from_static(b"Hello World"));
    for (range, want) in [
        ("0 3", "Hell"),
        ("0 -1", "Hello World"),
        ("-4 -1", "orld"),
        ("5 3", ""),
        ("5 5000", " World"),
        ("-5000 10000", "Hello World"),
        ("-1 -5", ""),
        ("0 -100", "H"),
    ] {
        assert_eq!(r(ks, &format!("GETRANGE h {range}")), bulk(want), "{range}");
    }
    assert_eq!(r(ks, "SUBSTR h 0 3"), bulk("Hell"));
    assert_eq!(r(ks, "GETRANGE missing 0 -1"), bulk(""));
    assert_eq!(r(ks, "APPEND h !"), Int(12));
    assert_eq!(r(ks, "APPEND new x"), Int(1));
    assert_eq!(r(ks, "STRLEN h"), Int(12));
    assert_eq!(r(ks, "STRLEN missing"), Int(0));
}

#[test]
fn bits_follow_redis() {
    let ks = &mut Keyspace::default();
    assert_eq!(r(ks, "SETBIT b 1 1"), Int(0));
    assert_eq!(value(ks, "b").as_deref(), Some("\x40"));
    assert_eq!(r(ks, "SETBIT b 1 0"), Int(1));
    assert_eq!(value(ks, "b").as_deref(), Some("\0"));
    assert_eq!(r(ks, "GETBIT b 1000"), Int(0));
    assert_eq!(r(ks, "GETBIT missing 0"), Int(0));
    assert!(is_err(&r(ks, "SETBIT b -1 1"), "out of range"));
    assert!(is_err(&r(ks, "SETBIT b 4294967296 1"), "out of range"));
    assert!(is_err(&r(ks, "SETBIT b 0 2"), "bit is not an integer"));
    ks.set(&Bytes::from_static(b"f"), Bytes::from_static(b"foobar"));
    assert_eq!(r(ks, "BITCOUNT f"), Int(26));
    assert_eq!(r(ks, "BITCOUNT f 0 0"), Int(4));
    assert_eq!(r(ks, "BITCOUNT f 1 1"), Int(6));
    assert_eq!(r(ks, "BITCOUNT f 1 1 BYTE"), Int(6));
    assert_eq!(r(ks, "BITCOUNT f 5 30 BIT"), Int(17));
    assert_eq!(r(ks, "BITCOUNT missing"), Int(0));
    assert!(is_err(&r(ks, "BITCOUNT f 0"), "syntax error"));
    assert!(is_err(&r(ks, "BITCOUNT f 0 1 WORD"), "syntax error"));
}

#[test]
fn lcs_follows_the_reference_example() {
    let ks = &mut Keyspace::default();
    r(ks, "MSET key1 ohmytext key2 mynewtext");
    assert_eq!(r(ks, "LCS key1 key2"), bulk("mytext"));
    assert_eq!(r(ks, "LCS key1 key2 LEN"), Int(6));
    let pair = |a: i64, b: i64| Array(vec![Int(a), Int(b)]);
    let idx = |matches: Vec<CommandReply>| Array(vec![bulk("matches"), Array(matches), bulk("len"), Int(6)]);
    assert_eq!(
        r(ks, "LCS key1 key2 IDX"),
        idx(vec![
            Array(vec![pair(4, 7), pair(5, 8)]),
            Array(vec![pair(2, 3), pair(0, 1)])
        ])
    );
    assert_eq!(
        r(ks, "LCS key1 key2 IDX MINMATCHLEN 4 WITHMATCHLEN"),
        idx(vec![Array(vec![pair(4, 7), pair(5, 8), Int(4)])])
    );
    assert!(is_err(&r(ks, "LCS key1 key2 LEN IDX"), "just use IDX"));
    assert_eq!(r(ks, "LCS key1 missing"), bulk(""));
}

#[test]
fn writes_are_collected_once_per_key() {
    let mut ks = Keyspace::new(0, [(Bytes::from_static(b"a"), Some(Bytes::from_static(b"1")), 0)]);
    r(&mut ks, "INCR a");
    r(&mut ks, "INCR a");
    r(&mut ks, "GET b");
    r(&mut ks, "SET c x");
    r(&mut ks, "DEL c");
    assert_eq!(
        ks.into_writes(),
        vec![
            (Bytes::from_static(b"a"), Some(Bytes::from_static(b"3")), 0),
            (Bytes::from_static(b"c"), None, 0),
        ]
    );
}

#[test]
fn keys_are_where_redis_puts_them() {
    let k = |line: &str| {
        keys(
            &line
                .split(' ')
                .map(|w| Bytes::from(w.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    let b = |v: &[&str]| v.iter().map(|s| Bytes::from(s.to_string())).collect::<Vec<_>>();
    assert_eq!(k("INCR a"), Ok(b(&["a"])));
    assert_eq!(k("MSET a 1 b 2"), Ok(b(&["a", "b"])));
    assert_eq!(k("DEL a b a"), Ok(b(&["a", "b", "a"])));
    assert_eq!(k("LCS a b IDX"), Ok(b(&["a", "b"])));
    assert_eq!(k("SET a v NX GET"), Ok(b(&["a"])));
    assert!(k("MSET a 1 b").is_err());
    assert!(k("PING").is_err());
}

/// Any words: no panic, and an error never writes.
#[test]
fn any_words_run_without_panicking() {
    let mut rng = crate::rng::Rng::new(15);
    let words: Vec<&[u8]> =
        "0 1 -1 2 10 4294967296 -9223372036854775808 NX XX GET BIT BYTE IDX LEN MINMATCHLEN WITHMATCHLEN k x"
            .split(' ')
            .map(str::as_bytes)
            .collect();
    for _ in 0..20_000 {
        let spec = &COMMANDS[rng.below(COMMANDS.len() as u64) as usize];
        let mut line = vec![Bytes::from_static(spec.name.as_bytes())];
        for _ in 0..rng.below(7) {
            line.push(Bytes::copy_from_slice(
                words[rng.below(words.len() as u64) as usize],
            ));
        }
        let mut ks = Keyspace::new(
            1_000,
            [(Bytes::from_static(b"k"), Some(Bytes::from_static(b"12")), 0)],
        );
        let reply = run(&line, &mut ks);
        if matches!(reply, CommandReply::Error(_)) {
            assert!(!ks.is_written(), "{line:?} failed and wrote");
        }
    }
}

#[test]
fn expiry_follows_redis() {
    let now = 1_000_000;
    let ks = &mut Keyspace::new(now, []);
    assert_eq!(r(ks, "SET k v EX 10"), Status("OK".into()));
    assert_eq!(r(ks, "TTL k"), Int(10));
    assert_eq!(r(ks, "PTTL k"), Int(10_000));
    assert_eq!(r(ks, "EXPIRETIME k"), Int(1_010));
    assert_eq!(r(ks, "PEXPIRETIME k"), Int(1_010_000));
    assert_eq!(r(ks, "INCRBY n 1"), Int(1));
    assert_eq!(r(ks, "TTL n"), Int(-1));
    assert_eq!(r(ks, "TTL missing"), Int(-2));
    // INCR, APPEND and SETRANGE keep an expiry; SET and GETSET drop it; KEEPTTL keeps it.
    assert_eq!(r(ks, "SETEX c 100 1"), Status("OK".into()));
    r(ks, "INCR c");
    r(ks, "APPEND c 0");
    r(ks, "SETRANGE c 0 3");
    assert_eq!(r(ks, "TTL c"), Int(100));
    assert_eq!(r(ks, "SET c x KEEPTTL"), Status("OK".into()));
    assert_eq!(r(ks, "TTL c"), Int(100));
    r(ks, "SET c y");
    assert_eq!(r(ks, "TTL c"), Int(-1));
    assert_eq!(r(ks, "PSETEX p 1500 v"), Status("OK".into()));
    assert_eq!(r(ks, "TTL p"), Int(2), "rounded as Redis rounds");
    assert!(is_err(
        &r(ks, "SETEX k 0 v"),
        "invalid expire time in 'setex' command"
    ));
    assert!(is_err(
        &r(ks, "SET k v EX -1"),
        "invalid expire time in 'set' command"
    ));
    assert!(is_err(&r(ks, "SET k v EX x"), "not an integer"));
    assert!(is_err(&r(ks, "SET k v EX 1 PX 1"), "syntax error"));
    assert!(is_err(&r(ks, "SET k v EX 1 KEEPTTL"), "syntax error"));
    assert!(is_err(
        &r(ks, "SET k v EX 9223372036854775807"),
        "invalid expire time"
    ));
    // EXPIRE's conditions.
    assert_eq!(r(ks, "EXPIRE n 100 XX"), Int(0));
    assert_eq!(r(ks, "EXPIRE n 100 GT"), Int(0), "no expiry counts as infinite");
    assert_eq!(r(ks, "EXPIRE n 100 NX"), Int(1));
    assert_eq!(r(ks, "EXPIRE n 200 NX"), Int(0));
    assert_eq!(r(ks, "EXPIRE n 50 GT"), Int(0));
    assert_eq!(r(ks, "EXPIRE n 50 LT"), Int(1));
    assert_eq!(r(ks, "TTL n"), Int(50));
    assert_eq!(r(ks, "PEXPIRE n 60000 XX"), Int(1));
    assert_eq!(r(ks, "TTL n"), Int(60));
    assert!(is_err(&r(ks, "EXPIRE n 1 NX XX"), "not compatible"));
    assert!(is_err(&r(ks, "EXPIRE n 1 GT LT"), "not compatible"));
    assert!(is_err(&r(ks, "EXPIRE n 1 FOO"), "Unsupported option FOO"));
    assert!(is_err(
        &r(ks, "EXPIRE n 9223372036854775807"),
        "invalid expire time in 'expire'"
    ));
    assert_eq!(r(ks, "EXPIRE missing 10"), Int(0));
    assert_eq!(r(ks, "EXPIREAT n 2000"), Int(1));
    assert_eq!(r(ks, "PERSIST n"), Int(1));
    assert_eq!(r(ks, "PERSIST n"), Int(0));
    // A time already past deletes the key.
    assert_eq!(r(ks, "EXPIRE n -1"), Int(1));
    assert_eq!(r(ks, "GET n"), Nil);
    assert_eq!(r(ks, "SET gone v PXAT 5"), Status("OK".into()));
    assert_eq!(r(ks, "EXISTS gone"), Int(0));
    // GETEX.
    r(ks, "SET g v");
    assert_eq!(r(ks, "GETEX g EX 30"), bulk("v"));
    assert_eq!(r(ks, "TTL g"), Int(30));
    assert_eq!(r(ks, "GETEX g PERSIST"), bulk("v"));
    assert_eq!(r(ks, "TTL g"), Int(-1));
    assert_eq!(r(ks, "GETEX missing EX 1"), Nil);
    assert!(is_err(&r(ks, "GETEX g EX 0"), "invalid expire time in 'getex'"));
    assert!(is_err(&r(ks, "GETEX g FOO"), "syntax error"));
    // What the owner reads expired is absent.
    let mut at = Keyspace::new(
        now,
        [
            (Bytes::from_static(b"old"), Some(Bytes::from_static(b"v")), now),
            (
                Bytes::from_static(b"new"),
                Some(Bytes::from_static(b"v")),
                now + 1,
            ),
        ],
    );
    assert_eq!(r(&mut at, "EXISTS old new"), Int(1));
    assert_eq!(r(&mut at, "INCR old"), Int(1));
    assert_eq!(r(&mut at, "TTL old"), Int(-1), "a new value, no expiry");
}

#[test]
fn rename_and_copy_follow_redis() {
    let ks = &mut Keyspace::new(1_000, []);
    assert!(is_err(&r(ks, "RENAME a b"), "no such key"));
    r(ks, "SET a 1 EX 100");
    r(ks, "SET b 2");
    assert_eq!(r(ks, "RENAMENX a b"), Int(0));
    assert_eq!(r(ks, "RENAMENX a a"), Int(0));
    assert_eq!(r(ks, "RENAME a a"), Status("OK".into()));
    assert_eq!(r(ks, "RENAME a b"), Status("OK".into()));
    assert_eq!(r(ks, "GET a"), Nil);
    assert_eq!(r(ks, "GET b"), bulk("1"));
    assert_eq!(r(ks, "TTL b"), Int(100), "the expiry moves with the value");
    assert_eq!(r(ks, "RENAMENX b c"), Int(1));
    assert_eq!(r(ks, "COPY c d"), Int(1));
    assert_eq!(r(ks, "TTL d"), Int(100));
    r(ks, "SET c 3");
    assert_eq!(r(ks, "COPY c d"), Int(0));
    assert_eq!(r(ks, "COPY c d REPLACE"), Int(1));
    assert_eq!(r(ks, "GET d"), bulk("3"));
    assert_eq!(r(ks, "TTL d"), Int(-1));
    assert_eq!(r(ks, "COPY missing d"), Int(0));
    assert!(is_err(&r(ks, "COPY c c"), "are the same"));
    assert!(is_err(&r(ks, "COPY c e DB 1"), "out of range"));
    assert_eq!(r(ks, "COPY c e DB 0"), Int(1));
}
