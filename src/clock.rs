//! The one place "now" comes from, so the shells can be driven by a test clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in epoch milliseconds.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Epoch millis as RFC 3339 UTC to the second (`2026-11-28T00:45:00Z`), for any value:
/// before 1970 too (an event from a wrong clock must not crash a report; humantime's
/// formatter panics there). Years outside 0..=9999 are written as they are.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// (year, month, day) of a day count from 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_epoch_millis() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_831_200_000), "2026-11-28T02:00:00Z");
        assert_eq!(super::rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(super::rfc3339(-86_400_000 * 365), "1969-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        // Extremes format without panicking.
        assert!(super::rfc3339(i64::MIN).ends_with('Z'));
        assert!(super::rfc3339(i64::MAX).ends_with('Z'));
    }

    proptest::proptest! {
        /// Agrees with humantime wherever humantime works (1970 to 9999).
        #[test]
        fn agrees_with_humantime(ms in 0i64..253_402_300_799_000) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            proptest::prop_assert_eq!(
                super::rfc3339(ms),
                humantime::format_rfc3339_seconds(t).to_string()
            );
        }
    }
}
