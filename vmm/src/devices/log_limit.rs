//! At most one log line per interval for what a guest can make happen as often as it likes (a
//! device set up wrong and reset in a loop, frames it should not send): the VMM's log is a file
//! on the host, and a guest must not be able to fill it. Lines held back are counted, and the
//! next line that goes out says how many.

use std::time::{Duration, Instant};

/// How often a guest-caused event is logged at most.
pub const GUEST_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// One kind of guest-caused log line and when it last went out.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(GUEST_LOG_INTERVAL)
    }
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when a line may go out now, `n` being how many were held back since the last;
    /// `None` (and one more held back) otherwise.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_counts_the_rest() {
        let mut limiter = LogLimiter::new(Duration::from_millis(200));
        assert_eq!(limiter.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(limiter.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limiter.allow(), Some(1000));
        assert_eq!(limiter.allow(), None);
    }
}
