//! JSON string text, shared by both byte-level transcoders: finding the next byte that
//! ends or escapes a string (a quote, a backslash, a control character) eight bytes at a
//! time, and writing strings that need no escapes without a per-byte escape table. The
//! log writers use the same scan for text they may write as is (`is_plain`).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// `bytes` as little-endian words of eight, and the bytes left over.
fn words(bytes: &[u8]) -> (impl Iterator<Item = u64> + '_, &[u8]) {
    let chunks = bytes.chunks_exact(8);
    let rest = chunks.remainder();
    let words = chunks.map(|chunk| {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        u64::from_le_bytes(word)
    });
    (words, rest)
}

/// The high bit of each byte of `v` equal to `byte`; borrows only run upwards, so the
/// lowest bit set is a true match (higher ones may not be).
fn equal_to(v: u64, byte: u8) -> u64 {
    let x = v ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGH
}

/// The high bit of each byte of `v` that is `"`, `\` or a control character (as above).
fn specials(v: u64) -> u64 {
    equal_to(v, b'"') | equal_to(v, b'\\') | v.wrapping_sub(ONES * 0x20) & !v & HIGH
}

/// Where the first `"`, `\` or control character at or after `at` is (or the end).
pub(super) fn next_special(bytes: &[u8], at: usize) -> usize {
    let (words, rest) = words(bytes.get(at..).unwrap_or_default());
    let mut offset = at;
    for v in words {
        let found = specials(v);
        if found != 0 {
            return offset + (found.trailing_zeros() / 8) as usize;
        }
        offset += 8;
    }
    for &byte in rest {
        if is_special(byte) {
            return offset;
        }
        offset += 1;
    }
    offset
}

/// Whether `text` is printable ASCII without `"` or `\`: JSON and Rust's `Debug` both
/// write it as is between quotes (trace ids, paths and routes in every access line).
pub(crate) fn is_plain(text: &str) -> bool {
    let (mut words, rest) = words(text.as_bytes());
    // Not ASCII (the high bit), DEL, or one of the specials.
    words.all(|v| (v & HIGH) | equal_to(v, 0x7f) | specials(v) == 0)
        && rest
            .iter()
            .all(|&b| matches!(b, b' '..=b'~') && !is_special(b))
}

/// Whether `bytes` are ASCII without a quote, a backslash or a control character: valid
/// UTF-8 that JSON writes as is between quotes (most string fields a backend sends).
pub(super) fn is_ascii_unescaped(bytes: &[u8]) -> bool {
    let (mut words, rest) = words(bytes);
    words.all(|v| (v & HIGH) | specials(v) == 0) && rest.iter().all(|&b| b < 0x80 && !is_special(b))
}

fn is_special(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

/// `text` as a JSON string, escaped as serde_json escapes it.
pub(super) fn write_string(out: &mut Vec<u8>, text: &str) {
    if next_special(text.as_bytes(), 0) == text.len() {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        let mut serializer = serde_json::Serializer::new(out);
        // Writing to a Vec cannot fail.
        let _ = serde::Serializer::serialize_str(&mut serializer, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_found_as_a_byte_scan_finds_it() {
        let by_bytes = |t: &str| {
            t.bytes()
                .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
        };
        let mut texts = vec![String::new(), "4bf92f3577b34da6a3ce929d0e0e4736".into()];
        for special in ['"', '\\', '\u{7f}', '\u{1f}', '\0', 'é', '\n', ' ', '~'] {
            for at in 0..20 {
                let mut text = "a".repeat(20);
                text.replace_range(at..at + 1, &special.to_string());
                texts.push(text);
            }
        }
        for text in &texts {
            assert_eq!(is_plain(text), by_bytes(text), "{text:?}");
        }
    }

    #[test]
    fn ascii_without_escapes_is_found_as_a_byte_scan_finds_it() {
        let by_bytes = |t: &[u8]| t.iter().all(|&b| b < 0x80 && !is_special(b));
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xc3, 0xff,
        ];
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.u8(0..8) {
                    0 => alphabet[rng.usize(0..alphabet.len())],
                    _ => rng.u8(0x20..0x7f),
                })
                .collect();
            assert_eq!(is_ascii_unescaped(&bytes), by_bytes(&bytes), "{bytes:?}");
        }
    }

    #[test]
    fn finds_the_first_special_byte_as_a_byte_scan_does() {
        let mut rng = fastrand::Rng::with_seed(5);
        let alphabet = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xe9, 0xff, b'!',
        ];
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.u8(0..8) == 0 {
                        alphabet[rng.usize(0..alphabet.len())]
                    } else {
                        rng.u8(..)
                    }
                })
                .collect();
            let at = rng.usize(0..=len);
            let expected = bytes[at..]
                .iter()
                .position(|&b| is_special(b))
                .map_or(len, |i| at + i);
            assert_eq!(next_special(&bytes, at), expected, "{bytes:?} from {at}");
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut rng = fastrand::Rng::with_seed(6);
        let pieces = [
            "a", "\"", "\\", "\n", "\u{1}", "\u{1f}", " ", "\u{7f}", "é", "€", "𝄞", "/",
        ];
        for _ in 0..5_000 {
            let text: String = (0..rng.usize(0..20))
                .map(|_| pieces[rng.usize(0..pieces.len())])
                .collect();
            let mut out = b"x".to_vec();
            write_string(&mut out, &text);
            let mut expected = b"x".to_vec();
            serde_json::to_writer(&mut expected, &text).unwrap();
            assert_eq!(out, expected, "{text:?}");
        }
    }
}
