//! Redis' glob-style patterns (util.c `stringmatchlen`), for KEYS and SCAN's MATCH: `*` any
//! bytes, `?` one byte, `[abc]`, `[^abc]`, `[a-z]` one byte of (or not of) a set, `\x` the
//! byte `x`. Matching is linear in practice: a star's backtracking restarts only from the last
//! star (each other token takes exactly one byte).

/// One token of a pattern.
#[derive(Debug)]
enum Token {
    Star,
    Any,
    Byte(u8),
    /// A set of ranges (inclusive), negated or not.
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

fn parse(pattern: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' => {
                if !matches!(tokens.last(), Some(Token::Star)) {
                    tokens.push(Token::Star);
                }
            }
            b'?' => tokens.push(Token::Any),
            b'\\' if i + 1 < pattern.len() => {
                i += 1;
                tokens.push(Token::Byte(pattern[i]));
            }
            b'[' => {
                i += 1;
                let negated = pattern.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                // Up to the closing `]`, or the end of the pattern (Redis' reading of an
                // unclosed set).
                while i < pattern.len() && pattern[i] != b']' {
                    let mut lo = pattern[i];
                    if lo == b'\\' && i + 1 < pattern.len() {
                        i += 1;
                        lo = pattern[i];
                    }
                    if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
                        let hi = pattern[i + 2];
                        ranges.push((lo.min(hi), lo.max(hi)));
                        i += 3;
                    } else {
                        ranges.push((lo, lo));
                        i += 1;
                    }
                }
                tokens.push(Token::Class { negated, ranges });
            }
            b => tokens.push(Token::Byte(b)),
        }
        i += 1;
    }
    tokens
}

fn one(token: &Token, b: u8) -> bool {
    match token {
        Token::Star => true,
        Token::Any => true,
        Token::Byte(x) => *x == b,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&b)) != *negated
        }
    }
}

/// Whether `text` matches the glob `pattern`, as Redis' KEYS and SCAN MATCH decide.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let tokens = parse(pattern);
    let (mut t, mut s) = (0, 0);
    // The last star seen, and the text position its match is tried from.
    let mut star: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, s));
                t += 1;
            }
            Some(token) if one(token, text[s]) => {
                t += 1;
                s += 1;
            }
            _ => match star {
                Some((st, ss)) => {
                    t = st + 1;
                    s = ss + 1;
                    star = Some((st, ss + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|tk| matches!(tk, Token::Star))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_as_redis_does() {
        for (pattern, text, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("key:*", "key:1", true),
            ("key:*", "kex:1", false),
            ("*:*:*", "a:b:c", true),
            ("*a*b", "xxaxxb", true),
            ("*a*b", "xxaxxbx", false),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("foo*bar", "foobar", true),
            ("a[", "a", false),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern} ~ {text}"
            );
        }
    }
}
