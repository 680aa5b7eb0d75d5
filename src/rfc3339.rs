//! RFC 3339 date and time in UTC, written straight into a byte buffer: the access log's
//! timestamp and the JSON form of `google.protobuf.Timestamp`. `core::fmt` with its
//! padding machinery cost about 2,000 instructions per timestamp; this writes digits.
//! Each caller writes the fraction its format requires (a unit test per caller keeps the
//! output equal to the formatter it replaces).

/// `YYYY-MM-DDTHH:MM:SS` for `secs` seconds since 1970-01-01T00:00:00Z, proleptic
/// Gregorian. Years past 9999 are written `+YYYYY`, years before 0 `-YYYY`, as
/// `prost_types::Timestamp` and tracing's timer write them.
pub(crate) fn date_time(out: &mut Vec<u8>, secs: i64) {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400).unsigned_abs();
    let magnitude = year.unsigned_abs();
    if (0..=9999).contains(&year) {
        // Every date a request carries: written into an array, appended at once (a
        // push per digit, each with its capacity check, cost twice as much).
        let mut text = *b"0000-00-00T00:00:00";
        digits(&mut text[..4], magnitude);
        digits(&mut text[5..7], u64::from(month));
        digits(&mut text[8..10], u64::from(day));
        digits(&mut text[11..13], of_day / 3600);
        digits(&mut text[14..16], of_day / 60 % 60);
        digits(&mut text[17..], of_day % 60);
        out.extend_from_slice(&text);
        return;
    }
    if year > 9999 {
        out.push(b'+');
    } else if year < 0 {
        out.push(b'-');
    }
    if magnitude > 9999 {
        out.extend_from_slice(itoa::Buffer::new().format(magnitude).as_bytes());
    } else {
        padded(out, magnitude, 4);
    }
    for (separator, value) in [
        (b'-', u64::from(month)),
        (b'-', u64::from(day)),
        (b'T', of_day / 3600),
        (b':', of_day / 60 % 60),
        (b':', of_day % 60),
    ] {
        out.push(separator);
        padded(out, value, 2);
    }
}

/// The last `place.len()` decimal digits of `n` into `place`, zero-padded.
fn digits(place: &mut [u8], mut n: u64) {
    for digit in place.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The last `width` decimal digits of `n`, zero-padded.
pub(crate) fn padded(out: &mut Vec<u8>, n: u64, width: u32) {
    let mut text = [b'0'; 20];
    let place = &mut text[..(width as usize).min(20)];
    digits(place, n);
    out.extend_from_slice(place);
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(secs: i64) -> String {
        let mut out = Vec::new();
        date_time(&mut out, secs);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dates_as_prost_writes_them() {
        // prost_types' own (musl-derived) calendar is the reference, over ±12,000 years.
        let mut seconds = vec![0, -1, 86_399, 86_400, 951_782_400, 1_709_164_800];
        seconds.extend((0..20_000).map(|_| fastrand::i64(-440_000_000_000..440_000_000_000)));
        for secs in seconds {
            let expected = prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }
            .to_string();
            assert_eq!(format!("{}Z", text(secs)), expected, "{secs}");
        }
    }
}
