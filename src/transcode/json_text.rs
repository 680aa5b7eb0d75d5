//! JSON string text, shared by both byte-level transcoders: finding the next byte that
//! ends or escapes a string (a quote, a backslash, a control character) eight bytes at a
//! time, and writing strings that need no escapes without a per-byte escape table.

/// Where the first `"`, `\` or control character at or after `at` is (or the end).
pub(super) fn next_special(bytes: &[u8], at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let rest = bytes.get(at..).unwrap_or_default();
    let mut chunks = rest.chunks_exact(8);
    let mut offset = at;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let quote = v ^ (ONES * u64::from(b'"'));
        let backslash = v ^ (ONES * u64::from(b'\\'));
        // The high bit of each byte that is zero in `quote` or `backslash`, or below 0x20
        // in `v`. Borrows only run upwards, so the lowest bit found is a true match.
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | v.wrapping_sub(ONES * 0x20) & !v)
            & HIGH;
        if found != 0 {
            return offset + (found.trailing_zeros() / 8) as usize;
        }
        offset += 8;
    }
    for &byte in chunks.remainder() {
        if is_special(byte) {
            return offset;
        }
        offset += 1;
    }
    offset
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
