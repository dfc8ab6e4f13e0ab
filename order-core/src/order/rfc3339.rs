//! Times written exactly as chrono's own `Serialize` writes them (RFC 3339 in UTC with `Z`,
//! the fraction in 0, 3, 6 or 9 digits, the fewest that keep it exact), with the digits put
//! in place by hand: through `fmt`, the four times of an order were the largest part of
//! serialising it, on every read the API answers.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the longest written here.
const LONGEST: usize = 30;

pub(crate) fn serialize<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut text = [0_u8; LONGEST];
    match write(time, &mut text) {
        // Only ASCII digits and separators are written, so the bytes are UTF-8.
        Some(len) => match std::str::from_utf8(text.get(..len).unwrap_or_default()) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => time.serialize(serializer),
        },
        // A year outside 0..=9999 or a leap second: chrono's own form.
        None => time.serialize(serializer),
    }
}

pub(crate) fn serialize_option<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serialize(time, serializer),
        None => serializer.serialize_none(),
    }
}

/// Writes `time` into `out` and returns its length, or `None` for what only chrono's
/// general form covers.
fn write(time: &DateTime<Utc>, out: &mut [u8; LONGEST]) -> Option<usize> {
    let year = u32::try_from(time.year()).ok().filter(|&y| y <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut at = 0;
    put(out, &mut at, year, 4, b'-')?;
    put(out, &mut at, time.month(), 2, b'-')?;
    put(out, &mut at, time.day(), 2, b'T')?;
    put(out, &mut at, time.hour(), 2, b':')?;
    put(out, &mut at, time.minute(), 2, b':')?;
    if nanos == 0 {
        put(out, &mut at, time.second(), 2, b'Z')?;
    } else {
        put(out, &mut at, time.second(), 2, b'.')?;
        if nanos.is_multiple_of(1_000_000) {
            put(out, &mut at, nanos / 1_000_000, 3, b'Z')?;
        } else if nanos.is_multiple_of(1_000) {
            put(out, &mut at, nanos / 1_000, 6, b'Z')?;
        } else {
            put(out, &mut at, nanos, 9, b'Z')?;
        }
    }
    Some(at)
}

/// Writes `value`'s last `width` decimal digits at `at`, zero-padded, then `separator`.
fn put(out: &mut [u8], at: &mut usize, value: u32, width: usize, separator: u8) -> Option<()> {
    let mut rest = value;
    for byte in out.get_mut(*at..*at + width)?.iter_mut().rev() {
        *byte = *b"0123456789".get(usize::try_from(rest % 10).ok()?)?;
        rest /= 10;
    }
    *out.get_mut(*at + width)? = separator;
    *at += width + 1;
    Some(())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    /// `time` as this module writes it, and as chrono does.
    fn both(time: DateTime<Utc>) -> (String, String) {
        #[derive(serde::Serialize)]
        struct Ours(#[serde(serialize_with = "super::serialize")] DateTime<Utc>);
        (
            serde_json::to_string(&Ours(time)).unwrap_or_default(),
            serde_json::to_string(&time).unwrap_or_default(),
        )
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let base = Utc.with_ymd_and_hms(2026, 12, 3, 9, 5, 7).unwrap();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut times = vec![
            base,
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0).unwrap(),
            DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap(),
        ];
        for _ in 0..20_000 {
            let seconds = i64::try_from(next() % 8_000_000_000).unwrap() - 1_000_000_000;
            let nanos = match next() % 4 {
                0 => 0,
                1 => u32::try_from(next() % 1_000).unwrap() * 1_000_000,
                2 => u32::try_from(next() % 1_000_000).unwrap() * 1_000,
                _ => u32::try_from(next() % 1_000_000_000).unwrap(),
            };
            times.push(DateTime::from_timestamp(seconds, nanos).unwrap());
        }
        for time in times {
            let (ours, chrono) = both(time);
            assert_eq!(ours, chrono, "{time:?}");
        }
    }
}
