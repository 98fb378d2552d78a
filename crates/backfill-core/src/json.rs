//! JSON text, written and checked by hand where it is on every document's path: strings
//! with their escapes (a word at a time), integers without the formatting machinery, and
//! the JSON number grammar. [`crate::row`] builds rows from these, [`crate::encode`]
//! renders database values with them.

/// Writes `s` as a JSON string.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    write_json_utf8(out, s.as_bytes());
}

/// [`write_json_str`] for bytes the caller has found to be UTF-8 (escaping looks only at
/// ASCII bytes, so it never needs the `str`).
pub fn write_json_utf8(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len() + 2);
    out.push(b'"');
    // Short strings (column names, most keys and metadata) are checked byte by byte,
    // without padding them into a word.
    if b.len() <= SHORT && b.iter().all(|&c| !needs_escape(c)) {
        out.extend_from_slice(b);
    } else {
        write_json_utf8_inner(out, b);
    }
    out.push(b'"');
}

/// The longest string [`write_json_str`] checks byte by byte.
const SHORT: usize = 16;

/// Whether JSON must escape the byte: a control character, `"` or `\\`.
#[inline]
fn needs_escape(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// `s` escaped as the inside of a JSON string, byte for byte as `serde_json` escapes it:
/// `\"` and `\\`, the short escapes `\b \f \n \r \t`, `\u00xx` for the other control
/// characters, everything else (0x7F and non-ASCII included) as it stands.
#[inline]
pub fn write_json_str_inner(out: &mut Vec<u8>, s: &str) {
    write_json_utf8_inner(out, s.as_bytes());
}

/// [`write_json_str_inner`] for bytes known to be UTF-8.
#[inline]
fn write_json_utf8_inner(out: &mut Vec<u8>, b: &[u8]) {
    match next_escape(b, 0) {
        None => out.extend_from_slice(b),
        Some(at) => write_escaped_from(out, b, at),
    }
}

/// The rest of [`write_json_str_inner`], from the first byte to escape.
#[inline(never)]
fn write_escaped_from(out: &mut Vec<u8>, b: &[u8], first: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut copied = 0;
    let mut i = first;
    while let Some(at) = next_escape(b, i) {
        out.extend_from_slice(&b[copied..at]);
        let c = b[at];
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xF)],
            ]),
        }
        copied = at + 1;
        i = at + 1;
    }
    out.extend_from_slice(&b[copied..]);
}

/// The first index at or after `from` of a byte JSON must escape (a control character,
/// `"` or `\\`). Eight bytes at a time: text columns rarely hold any, and this was the
/// largest single function of the backfill profiles when it went byte by byte.
#[inline]
fn next_escape(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(word) = b.get(i..i + 8) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        if let Some(p) = escape_in_word(eight) {
            return Some(i + p);
        }
        i += 8;
    }
    // The tail (most names are all tail), padded with a byte that needs no escape.
    let tail = b.get(i..)?;
    let mut eight = [b'a'; 8];
    eight[..tail.len()].copy_from_slice(tail);
    escape_in_word(eight).map(|p| i + p)
}

/// The first of eight bytes that JSON must escape.
fn escape_in_word(eight: [u8; 8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = u64::from_le_bytes(eight);
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    // High bit set for some byte exactly when some byte is below 0x20, or is '"' or '\\'
    // (non-ASCII bytes have their own high bit set, which `!x` clears).
    let below = x.wrapping_sub(ONES * 0x20) & !x;
    let quote = zero_byte(x ^ (ONES * u64::from(b'"')));
    let slash = zero_byte(x ^ (ONES * u64::from(b'\\')));
    if (below | quote | slash) & HIGH == 0 {
        return None;
    }
    eight
        .iter()
        .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// `v` in decimal, as `Display` writes it, without the formatting machinery (once or
/// twice per document).
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `v` in decimal, zero-padded on the left to at least `width` digits (up to 20): the
/// digits and where they start. For sources that print dates and decimals by digit
/// groups.
pub fn decimal_digits(mut v: u64, width: usize) -> ([u8; 20], usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    // Two digits per division, as `itoa` does.
    while v >= 100 {
        let pair = usize::try_from(v % 100).unwrap_or(0) * 2;
        v /= 100;
        i -= 2;
        digits[i] = DIGIT_PAIRS[pair];
        digits[i + 1] = DIGIT_PAIRS[pair + 1];
    }
    if v >= 10 {
        let pair = usize::try_from(v).unwrap_or(0) * 2;
        i -= 2;
        digits[i] = DIGIT_PAIRS[pair];
        digits[i + 1] = DIGIT_PAIRS[pair + 1];
    } else {
        i -= 1;
        digits[i] = b'0' + u8::try_from(v).unwrap_or(0);
    }
    (digits, i.min(digits.len().saturating_sub(width)))
}

/// The two decimal digits of `v % 100`, for sources that write fixed-width fields.
pub fn two_digits(v: u32) -> [u8; 2] {
    let pair = usize::try_from(v % 100).unwrap_or(0) * 2;
    [DIGIT_PAIRS[pair], DIGIT_PAIRS[pair + 1]]
}

/// `00` to `99`, two bytes each.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// `v` in decimal, as `Display` writes it.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Whether `text` is exactly a JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
pub fn is_json_number(text: impl AsRef<[u8]>) -> bool {
    let b = text.as_ref();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}
