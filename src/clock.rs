//! The one place "now" comes from, so the shells can be driven by a test clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in epoch milliseconds.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Epoch millis as RFC 3339 UTC to the second (`2026-11-28T00:45:00Z`).
pub fn rfc3339(ms: i64) -> String {
    let t = if ms >= 0 {
        UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_epoch_millis() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_831_200_000), "2026-11-28T02:00:00Z");
    }
}
