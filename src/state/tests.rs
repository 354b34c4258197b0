//! Unit tests of the state: RFC 3339 timestamps, checked against known dates and day
//! arithmetic over four centuries.

use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn at(secs: u64, millis: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
}

#[test]
fn rfc3339_times_are_utc_with_milliseconds() {
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    assert_eq!(at(1_736_936_625, 123), "2025-01-15T10:23:45.123Z");
    assert_eq!(at(1_767_225_599, 999), "2025-12-31T23:59:59.999Z");
    assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
}

#[test]
fn rfc3339_agrees_with_day_arithmetic_across_four_centuries() {
    // Every 1st of March from 1970 to 2370: the day count must land on it.
    let mut days = 59; // 1970-03-01
    for year in 1970..2370u64 {
        let text = rfc3339(UNIX_EPOCH + Duration::from_secs(days * 86_400));
        assert_eq!(text, format!("{year:04}-03-01T00:00:00.000Z"));
        let leap = (year + 1) % 4 == 0 && ((year + 1) % 100 != 0 || (year + 1) % 400 == 0);
        days += if leap { 366 } else { 365 };
    }
}
