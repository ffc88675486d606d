//! Time formatting that gives the same text on the server and in the browser, so a
//! server-rendered time never differs from the hydrated one.

/// `2026-11-22 14:03:21 UTC` for a Unix time in milliseconds.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// "just now", "5 min ago", "3 h ago" for a time up to a day before `now` (both Unix
/// milliseconds); `None` for anything older (show the date) or in the future beyond a
/// minute of clock skew.
pub fn relative(ms: i64, now: i64) -> Option<String> {
    let ago = now - ms;
    match ago {
        -60_000..60_000 => Some("just now".into()),
        60_000..3_600_000 => Some(format!("{} min ago", ago / 60_000)),
        3_600_000..86_400_000 => Some(format!("{} h ago", ago / 3_600_000)),
        _ => None,
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_000_000_123), "2026-11-18 11:06:40 UTC");
        assert_eq!(format_utc(-1000), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn recent_times_are_relative() {
        let now = 1_795_000_000_000;
        assert_eq!(relative(now - 5_000, now).as_deref(), Some("just now"));
        assert_eq!(relative(now + 5_000, now).as_deref(), Some("just now"));
        assert_eq!(relative(now - 150_000, now).as_deref(), Some("2 min ago"));
        assert_eq!(
            relative(now - 3 * 3_600_000, now).as_deref(),
            Some("3 h ago")
        );
        assert_eq!(relative(now - 86_400_000, now), None);
        assert_eq!(relative(now + 3_600_000, now), None);
    }
}
