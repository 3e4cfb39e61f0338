//! The retry policy: how often and how long an update is retried after a conflict.

use std::time::Duration;

use rand::Rng;

/// How the engine retries an update that lost a compare-and-swap race.
///
/// A conflict whose reply shows that another writer committed (a newer record) is retried at
/// once, up to [`RetryPolicy::immediate_retries`] times in a row (default 16): that is another
/// process making progress, and backing off from it would only let that process commit again
/// and again meanwhile. Other conflicts, and those beyond that, wait before retry `n` (counting
/// the waits from 1) a time drawn uniformly from
/// `0 ..= min(max_delay, base_delay * 2^(n-2))` ("full jitter"); the first retry waits nothing,
/// because a conflict usually hands back the fresh record at no cost. The defaults follow
/// FoundationDB's: 10 ms base, doubling, 1 s cap. For a conflict that shows another writer's
/// progress the bound stops growing at one reservation slice (see
/// [`RetryPolicy::reservation`]; at most 10 ms by default) unless reservations are off: the
/// scope is moving, and a process asleep for a second meanwhile is one that starves.
///
/// Where the driver reserves a scope in the same step as a lost write (contract rule 13), two
/// conflicts never back off, however many came before: one whose write reserved the scope is
/// retried at once (the other processes wait for its slice, so the retry commits), and one that
/// found another process's reservation waits for that slice, as a write it refused does.
///
/// ```
/// use std::time::Duration;
/// use mp_storage::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(20)
///     .deadline(Some(Duration::from_secs(5)));
/// assert_eq!(policy.max_delay_for_retry(1), Duration::ZERO);
/// assert_eq!(policy.max_delay_for_retry(2), Duration::from_millis(10));
/// assert_eq!(policy.max_delay_for_retry(3), Duration::from_millis(20));
/// assert_eq!(policy.max_delay_for_retry(30), Duration::from_secs(1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    deadline: Option<Duration>,
    base_delay: Duration,
    max_delay: Duration,
    immediate: u32,
    reservation: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 100,
            deadline: Some(Duration::from_secs(30)),
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
            immediate: 16,
            reservation: Duration::from_millis(10),
        }
    }
}

impl RetryPolicy {
    /// The most times the closure runs for one call (at least 1). Default 100.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The longest one call keeps retrying; `None` for no limit. Default 30 s. An attempt that
    /// has started is finished; no new one starts after the deadline.
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The wait bound of the second retry; it doubles with every retry after. Default 10 ms.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// The largest wait bound. Default 1 s.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// How many conflicts in a row that show another writer's progress are retried at once,
    /// before the backoff starts. Default 16; 0 backs off from every conflict (but the first
    /// retry, which never waits).
    pub fn immediate_retries(mut self, n: u32) -> Self {
        self.immediate = n;
        self
    }

    /// The longest time slice for which a process that loses a scope to other processes'
    /// commits reserves it (on drivers that have reservations): for the slice its writes of the
    /// scope go through and the others' wait, so that several processes on one hot scope take
    /// turns by slices instead of one of them starving. The slice is sixteen commits' worth at the
    /// round trip the engine measures (at least 1 ms), up to this bound: a few commits a turn,
    /// so that a process waiting for its turn waits a few commits, on a fast store as on a slow
    /// one. A process refused by another's slice asks again after about a slice, sooner the
    /// more often it was refused, so the one that waited longest gets the next turn. Default
    /// 10 ms; zero turns reservations off.
    pub fn reservation(mut self, ttl: Duration) -> Self {
        self.reservation = ttl;
        self
    }

    /// The configured reservation time.
    pub fn reservation_ttl(&self) -> Duration {
        self.reservation
    }

    /// The configured number of immediate retries.
    pub fn immediate_retry_limit(&self) -> u32 {
        self.immediate
    }

    /// The configured attempt cap.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The configured deadline.
    pub fn deadline_limit(&self) -> Option<Duration> {
        self.deadline
    }

    /// The upper bound of the wait before retry `retry` (1 is the first retry).
    pub fn max_delay_for_retry(&self, retry: u32) -> Duration {
        if retry <= 1 {
            return Duration::ZERO;
        }
        let shift = (retry - 2).min(31);
        let bound = self.base_delay.saturating_mul(1u32 << shift);
        bound.min(self.max_delay)
    }

    /// A random wait for retry `retry`, uniform in `0 ..= max_delay_for_retry(retry)`.
    pub fn delay_for_retry(&self, retry: u32) -> Duration {
        let bound = self.max_delay_for_retry(retry);
        if bound.is_zero() {
            return Duration::ZERO;
        }
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_in_bounds() {
        let p = RetryPolicy::default();
        for retry in 0..80 {
            let bound = p.max_delay_for_retry(retry);
            assert!(bound <= Duration::from_secs(1));
            for _ in 0..50 {
                assert!(p.delay_for_retry(retry) <= bound);
            }
        }
        assert_eq!(p.max_delay_for_retry(4), Duration::from_millis(40));
        assert_eq!(p.max_delay_for_retry(8), Duration::from_millis(640));
        assert_eq!(p.max_delay_for_retry(9), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads() {
        let p = RetryPolicy::default();
        let draws: Vec<_> = (0..200).map(|_| p.delay_for_retry(5)).collect();
        let min = draws.iter().min().copied().unwrap_or_default();
        let max = draws.iter().max().copied().unwrap_or_default();
        assert!(min < Duration::from_millis(20), "{min:?}");
        assert!(max > Duration::from_millis(60), "{max:?}");
    }

    #[test]
    fn attempts_at_least_one() {
        assert_eq!(RetryPolicy::default().max_attempts(0).attempts(), 1);
    }
}
