//! Wall-clock time for limits: Unix seconds for the one-minute windows, and the UTC days and
//! months of token budgets (their number, their end, and the end as RFC 3339 for `/v1/keys`).

use std::time::{SystemTime, UNIX_EPOCH};

use super::limits::Period;

const DAY_MS: u64 = 86_400_000;

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The budget period holding `ms`: its number (days or months since 1970, counting from 1 so
/// that 0 means "none") and when it ends, in Unix ms.
pub fn period_at(period: Period, ms: u64) -> (u64, u64) {
    let day = ms / DAY_MS;
    match period {
        Period::Day => (day + 1, (day + 1) * DAY_MS),
        Period::Month => {
            let (y, m, _) = civil_from_days(day);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let number = (y - 1970) * 12 + m;
            (number, days_from_civil(ny, nm, 1) * DAY_MS)
        }
    }
}

/// `ms` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Year, month (1-12) and day of a day count since 1970-01-01 (Howard Hinnant's algorithm,
/// proleptic Gregorian calendar).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`], for dates from 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-04T18:30:00Z.
    const T: u64 = 1_796_409_000_000;

    #[test]
    fn dates_round_trip() {
        assert_eq!(rfc3339(T), "2026-12-04T18:30:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        for days in [0, 59, 365, 10_000, 20_000, 20_791] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(
            rfc3339(days_from_civil(2024, 2, 29) * DAY_MS),
            "2024-02-29T00:00:00Z"
        );
    }

    #[test]
    fn periods_end_at_the_next_utc_midnight_or_first_of_month() {
        let (day, end) = period_at(Period::Day, T);
        assert_eq!(rfc3339(end), "2026-12-05T00:00:00Z");
        assert_eq!(period_at(Period::Day, end - 1).0, day);
        assert_eq!(period_at(Period::Day, end).0, day + 1);
        let (month, end) = period_at(Period::Month, T);
        assert_eq!(rfc3339(end), "2027-01-01T00:00:00Z");
        assert_eq!(period_at(Period::Month, end).0, month + 1);
        assert!(month > 0 && day > 0, "0 is \"no budget\"");
    }
}
