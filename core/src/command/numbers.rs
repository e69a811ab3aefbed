//! Numbers in values, read and written as Redis does (util.c `string2ll`, `string2ld`,
//! `ld2string`), so that `INCR` refuses exactly what Redis refuses.

/// A value read as a signed 64-bit integer, strictly: an optional `-`, then digits without a
/// leading zero (`"0"` alone is zero), nothing else (no spaces, no `+`), within `i64`.
pub(super) fn parse_int(text: &[u8]) -> Option<i64> {
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    if !digits.iter().all(u8::is_ascii_digit) || digits.len() > 19 {
        return None;
    }
    // At most 19 digits: the magnitude fits an i128 with room to spare.
    let magnitude: i128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

/// Longest text read as a float (Redis' `MAX_LONG_DOUBLE_CHARS`).
const MAX_FLOAT_TEXT: usize = 5 * 1024;

/// A value read as a float: the whole text, no leading space, not NaN; infinities are read
/// (an increment of `inf` is then refused for its result, as Redis does).
pub(super) fn parse_float(text: &[u8]) -> Option<f64> {
    if text.is_empty() || text.len() >= MAX_FLOAT_TEXT || text[0].is_ascii_whitespace() {
        return None;
    }
    let x: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    (!x.is_nan()).then_some(x)
}

/// A float as `INCRBYFLOAT` stores it: decimal, no exponent, no trailing zeros, no `-0`.
/// (Redis prints a C `long double` with 17 digits; this prints the shortest text that reads
/// back as the same `f64`, which is the same text for the values both represent exactly.)
pub(super) fn format_float(x: f64) -> String {
    if x == 0.0 {
        return "0".to_string();
    }
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_strictly() {
        for (text, want) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-0", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("-", None),
            ("1a", None),
            ("12345678901234567890123", None),
        ] {
            assert_eq!(parse_int(text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn floats_are_read_and_written_as_redis_does() {
        assert_eq!(parse_float(b"1.5"), Some(1.5));
        assert_eq!(parse_float(b"+inf"), Some(f64::INFINITY));
        assert_eq!(parse_float(b"nan"), None);
        assert_eq!(parse_float(b" 1"), None);
        assert_eq!(parse_float(b"1 "), None);
        assert_eq!(parse_float(b"1\x002"), None);
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(17179869185.5), "17179869185.5");
        assert_eq!(format_float(10.5 + 0.1), "10.6");
    }
}
