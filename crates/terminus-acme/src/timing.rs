//! When to renew and when to retry: pure arithmetic on Unix seconds, tested by tables.

use std::time::Duration;

/// Certificates living less than this are "short-lived": renewed when a third of their
/// lifetime is left rather than a month before expiry (a month would be most of their life).
const SHORT_LIVED: i64 = 90 * 86_400;
/// Heroku's rule, and Let's Encrypt's long-standing advice for 90-day certificates.
const MONTH: i64 = 30 * 86_400;
/// A retry never comes sooner than this, whatever a CA's Retry-After says.
const MIN_RETRY: i64 = 1;

/// When to renew a certificate valid from `not_before` to `not_after`: `renew_before` its
/// expiry when configured, else a month before (a third of the lifetime for short-lived
/// certificates). `jitter` in [0, 1) moves it earlier by up to 1/30 of the lifetime (at most
/// a day), so certificates issued together do not all renew in the same minute.
pub fn renew_at(
    not_before: i64,
    not_after: i64,
    renew_before: Option<Duration>,
    jitter: f64,
) -> i64 {
    let lifetime = (not_after - not_before).max(1);
    let before = match renew_before {
        Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        None if lifetime < SHORT_LIVED => lifetime / 3,
        None => MONTH,
    };
    // Never sooner than a third into the lifetime: a renew_before longer than the CA's
    // lifetime must not renew the moment a certificate arrives, again and again.
    let before = before.min(lifetime * 2 / 3);
    let spread = (lifetime / 30).min(86_400) as f64;
    let jitter = (spread * jitter.clamp(0.0, 1.0)) as i64;
    not_after.saturating_sub(before).saturating_sub(jitter)
}

/// A moment chosen inside a CA's ARI window (RFC 9773 §4.2: uniformly at random).
pub fn in_window(start: i64, end: i64, jitter: f64) -> i64 {
    if end <= start {
        return start;
    }
    start + ((end - start) as f64 * jitter.clamp(0.0, 1.0)) as i64
}

/// When to try again after the `failures`-th failure in a row: `min` doubled per failure up to
/// `max`, never sooner than the CA's `Retry-After`, spread by up to 10% (`jitter` in [0, 1)).
pub fn retry_at(
    now: i64,
    failures: u32,
    min: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> i64 {
    let exp = failures.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp).min(max);
    let spread = base.mul_f64(1.0 + 0.1 * jitter.clamp(0.0, 1.0));
    let wait = spread.max(retry_after.unwrap_or_default());
    now + i64::try_from(wait.as_secs())
        .unwrap_or(i64::MAX / 2)
        .max(MIN_RETRY)
}

/// A number in [0, 1) from the system's random generator (0.5 if it fails: timing only).
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn renewal_follows_the_lifetime() {
        // (lifetime days, renew_before, expected days before expiry, jitter 0)
        let cases = [
            (90, None, 30),
            (365, None, 30),
            (6, None, 2),
            (45, None, 15),
            (90, Some(Duration::from_secs(10 * 86_400)), 10),
            // Longer than the lifetime: two thirds before expiry at most.
            (30, Some(Duration::from_secs(365 * 86_400)), 20),
        ];
        for (days, before, want) in cases {
            let nb = 1_000_000;
            let na = nb + days * DAY;
            assert_eq!(
                renew_at(nb, na, before, 0.0),
                na - want * DAY,
                "{days}d {before:?}"
            );
        }
        // Jitter only moves earlier, by at most a day (or 1/30 of a short lifetime).
        let na = 90 * DAY;
        let j = renew_at(0, na, None, 0.999);
        assert!(j < na - 30 * DAY && j > na - 31 * DAY);
        assert!(renew_at(0, 6 * DAY, None, 0.999) > 4 * DAY - DAY / 5);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let min = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        let wait = |f, ra| retry_at(0, f, min, max, ra, 0.0);
        assert_eq!(wait(1, None), 60);
        assert_eq!(wait(2, None), 120);
        assert_eq!(wait(3, None), 240);
        assert_eq!(wait(10, None), 3600);
        assert_eq!(wait(1000, None), 3600);
        assert_eq!(wait(1, Some(Duration::from_secs(7200))), 7200);
        assert!(retry_at(0, 1, min, max, None, 0.999) <= 66);
    }

    #[test]
    fn window_pick_stays_inside() {
        assert_eq!(in_window(100, 200, 0.0), 100);
        assert!(in_window(100, 200, 0.999) < 200);
        assert_eq!(in_window(200, 100, 0.5), 200);
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
