//! Durations on the command line: `90s`, `15m`, `1h`, `7d`, or parts together (`1h30m`).

use std::time::Duration;

use crate::error::{CliError, CliResult};

/// The longest duration accepted (100 years): anything longer is a typo.
const MAX_SECS: u64 = 100 * 366 * 86_400;

/// Parses `90s`, `15m`, `1h`, `7d`, `2w` or a sum of them written together (`1h30m`).
/// `what` names the option in the error.
pub(crate) fn parse_duration(what: &str, s: &str) -> CliResult<Duration> {
    let bad = |why: &str| {
        CliError::input(format!(
            "{what} {s:?}: {why}; write a number and a unit, e.g. 90s, 15m, 1h, 7d (or 1h30m)"
        ))
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad(&format!("unknown unit {c:?}"))),
        };
        if digits.is_empty() {
            return Err(bad("a unit without a number"));
        }
        let n: u64 = digits.parse().map_err(|_| bad("number too large"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= MAX_SECS)
            .ok_or_else(|| bad("longer than 100 years"))?;
    }
    if !digits.is_empty() {
        return Err(bad("the last number has no unit"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        let p = |s| parse_duration("x", s).unwrap().as_secs();
        assert_eq!(p("90s"), 90);
        assert_eq!(p("15m"), 900);
        assert_eq!(p("1h"), 3600);
        assert_eq!(p("7d"), 604_800);
        assert_eq!(p("2w"), 1_209_600);
        assert_eq!(p("1h30m"), 5400);
        assert_eq!(p("0s"), 0);
        for bad in [
            "",
            "5",
            "h",
            "5x",
            "1.5h",
            "-1h",
            "99999999999999999999s",
            "1000000d",
        ] {
            let e = parse_duration("--retention", bad).unwrap_err().to_string();
            assert!(e.contains("--retention") && e.contains("90s"), "{bad}: {e}");
        }
    }
}
