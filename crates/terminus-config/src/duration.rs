use std::time::Duration;

/// A duration that does not read as a whole number and one unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("'{text}' has no unit: write e.g. '10s' or '500ms'")]
    NoUnit { text: String },
    #[error("'{text}' does not start with a whole number: write e.g. '10s'")]
    NoNumber { text: String },
    #[error("'{text}' has an unknown unit '{unit}': use ms, s, m, h or d")]
    UnknownUnit { text: String, unit: String },
    #[error("'{text}' is too large")]
    TooLarge { text: String },
}

/// Parses `500ms`, `10s`, `5m`, `12h`, `7d`: a whole number and one unit.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit { text: text.into() })?;
    let (number, unit) = text.split_at(split);
    let too_large = || DurationError::TooLarge { text: text.into() };
    let n: u64 = match number.parse() {
        Ok(n) => n,
        Err(_) if number.is_empty() => return Err(DurationError::NoNumber { text: text.into() }),
        Err(_) => return Err(too_large()),
    };
    let per_unit = match unit {
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86400),
        _ => {
            return Err(DurationError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
            })
        }
    };
    per_unit
        .checked_mul(u32::try_from(n).map_err(|_| too_large())?)
        .ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
    }

    #[test]
    fn rejects_with_a_hint() {
        let cases = [
            ("10", "no unit"),
            ("10 s", "unknown unit"),
            ("s", "whole number"),
            ("10y", "unknown unit"),
            ("99999999999999999999s", "too large"),
            ("5000000000s", "too large"),
        ];
        for (text, hint) in cases {
            let e = parse_duration(text).unwrap_err().to_string();
            assert!(e.contains(hint), "{text}: {e}");
        }
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::NoUnit { .. })
        ));
    }
}
