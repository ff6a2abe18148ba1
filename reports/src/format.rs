//! How numbers read in the report: the same precision in every table and chart.

/// What a missing figure shows as.
pub const NONE: &str = "–";

/// Latency in milliseconds with about three significant digits: `1.30`, `66.0`, `328`.
pub fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        return NONE.into();
    }
    let a = ms.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 10.0 {
        format!("{ms:.2}")
    } else if a < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// A count with thin spaces between thousands: `5 343`, `1 204 118`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 * 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    out
}

/// A rate per second with one decimal.
pub fn fmt_rate(per_s: f64) -> String {
    if per_s.is_finite() {
        format!("{per_s:.1}")
    } else {
        NONE.into()
    }
}

/// Seconds, or [`NONE`] when the figure was not reached or not measured.
pub fn fmt_s(s: Option<f64>, decimals: usize) -> String {
    match s {
        Some(s) if s.is_finite() => format!("{s:.decimals$} s"),
        _ => NONE.into(),
    }
}

/// A fraction as a percentage: `0.13 %`.
pub fn fmt_percent(fraction: f64) -> String {
    if !fraction.is_finite() {
        return NONE.into();
    }
    let p = fraction * 100.0;
    if p != 0.0 && p.abs() < 0.01 {
        format!("{p:.4} %")
    } else {
        format!("{p:.2} %")
    }
}

/// An RFC 3339 time as `2026-11-28 16:28:01 UTC`; anything else is shown as given.
pub fn fmt_time(rfc3339: &str) -> String {
    let Some((date, rest)) = rfc3339.split_once('T') else {
        return rfc3339.into();
    };
    if date.len() != 10 || rest.len() < 8 || !rest.is_char_boundary(8) {
        return rfc3339.into();
    }
    let (time, zone) = rest.split_at(8);
    let zone = zone.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let zone = match zone {
        "Z" | "+00:00" => "UTC",
        "" => "",
        other => other,
    };
    format!("{date} {time} {zone}").trim_end().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_three_digits() {
        assert_eq!(fmt_ms(1.303), "1.30");
        assert_eq!(fmt_ms(65.983), "66.0");
        assert_eq!(fmt_ms(327.679), "328");
        assert_eq!(fmt_ms(0.0), "0");
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(5343), "5\u{2009}343");
        assert_eq!(fmt_count(1_204_118), "1\u{2009}204\u{2009}118");
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(
            fmt_time("2026-11-28T16:28:01.065792673+00:00"),
            "2026-11-28 16:28:01 UTC"
        );
        assert_eq!(
            fmt_time("2026-11-28T16:28:01+02:00"),
            "2026-11-28 16:28:01 +02:00"
        );
        assert_eq!(fmt_time("yesterday"), "yesterday");
    }

    #[test]
    fn missing_seconds_show_a_dash() {
        assert_eq!(fmt_s(None, 2), NONE);
        assert_eq!(fmt_s(Some(0.4746), 2), "0.47 s");
    }
}
