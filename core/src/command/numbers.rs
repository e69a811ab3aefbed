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

/// A float as `INCRBYFLOAT` stores it: decimal, 17 digits after the point at most, no
/// exponent, no trailing zeros, no `-0` (Redis' `ld2string(..., LD_STR_HUMAN)`, `%.17Lf`
/// trimmed).
///
/// Redis computes in a C `long double` (64-bit mantissa), chordkv in an `f64` (53 bits): the
/// sum is first rounded to the 15 significant digits an `f64` always holds, so that `0.1 +
/// 0.2` is `0.3` as in Redis rather than `0.30000000000000004`. Results that need more than
/// 15 significant digits (`1e17 + 1`) or lie beyond an `f64`'s range (`2e308`) differ from
/// Redis'.
pub(super) fn format_float(x: f64) -> String {
    // 15 significant digits, `d.dddddddddddddde±x`, turned into fixed notation.
    let sci = format!("{:.14e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|d| d - b'0')
        .collect();
    // The digits of the integer part and of the fraction, with the point after `exp + 1`.
    let point = exp + 1;
    let (mut int, mut frac): (Vec<u8>, Vec<u8>) = if point <= 0 {
        (
            vec![0],
            std::iter::repeat_n(0, (-point) as usize).chain(digits).collect(),
        )
    } else {
        let p = point as usize;
        let mut d = digits;
        if d.len() < p {
            d.resize(p, 0);
        }
        let frac = d.split_off(p);
        (d, frac)
    };
    // At most 17 decimals (`%.17Lf`), rounded half up.
    if frac.len() > 17 {
        let up = frac[17] >= 5;
        frac.truncate(17);
        if up {
            let mut i = frac.len();
            let mut carry = true;
            while carry && i > 0 {
                i -= 1;
                frac[i] += 1;
                carry = frac[i] == 10;
                if carry {
                    frac[i] = 0;
                }
            }
            let mut i = int.len();
            while carry && i > 0 {
                i -= 1;
                int[i] += 1;
                carry = int[i] == 10;
                if carry {
                    int[i] = 0;
                }
            }
            if carry {
                int.insert(0, 1);
            }
        }
    }
    while frac.last() == Some(&0) {
        frac.pop();
    }
    let mut text: String = int.iter().map(|d| char::from(b'0' + d)).collect();
    if !frac.is_empty() {
        text.push('.');
        text.extend(frac.iter().map(|d| char::from(b'0' + d)));
    }
    if text == "0" || x == 0.0 {
        return "0".to_string();
    }
    if x < 0.0 {
        text.insert(0, '-');
    }
    text
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
        assert_eq!(format_float(0.1 + 0.2), "0.3");
        assert_eq!(format_float((0..10).map(|_| 0.1).sum()), "1");
        assert_eq!(format_float(1e-20), "0");
        assert_eq!(format_float(-2.5), "-2.5");
        assert_eq!(format_float(-1e-20), "0");
        assert_eq!(format_float(34359738368.0), "34359738368");
        assert_eq!(format_float(1.23456789012345e-5), "0.00001234567890123");
        assert_eq!(format_float(9.9999e-18), "0.00000000000000001");
        assert_eq!(format_float(1e20), "100000000000000000000");
    }
}
