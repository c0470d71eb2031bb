//! Token buckets for one direction of a device: bytes and frames, each refilled continuously at
//! its rate a second, holding at most one second's worth (the burst). A frame larger than a
//! whole bucket goes once the bucket is full, so a small byte rate slows big frames down
//! instead of stopping them.

use std::time::{Duration, Instant};

use cocoon_protocol::vm_config::RateLimit;

#[derive(Debug)]
struct Bucket {
    /// Tokens a second, which is also the capacity; 0 means unlimited.
    rate: u64,
    tokens: u64,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self { rate, tokens: rate }
    }

    fn refill(&mut self, elapsed: Duration) {
        if self.rate == 0 {
            return;
        }
        let added = u128::from(self.rate) * elapsed.as_nanos() / 1_000_000_000;
        self.tokens = (u128::from(self.tokens) + added).min(u128::from(self.rate)) as u64;
    }

    /// The cost this bucket charges for `amount` (capped at a full bucket), or None if unlimited.
    fn cost(&self, amount: u64) -> Option<u64> {
        (self.rate != 0).then(|| amount.min(self.rate))
    }

    /// How long until `cost` tokens are there.
    fn wait_for(&self, cost: u64) -> Duration {
        let missing = cost.saturating_sub(self.tokens);
        Duration::from_nanos(
            (u128::from(missing) * 1_000_000_000).div_ceil(u128::from(self.rate)) as u64,
        )
    }
}

/// The byte and frame buckets of one direction.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Bucket,
    frames: Bucket,
    refilled: Instant,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            bytes: Bucket::new(limit.bytes_per_sec),
            frames: Bucket::new(limit.packets_per_sec),
            refilled: Instant::now(),
        }
    }

    /// Takes the tokens for one frame of `len` bytes, or says how long to wait before trying
    /// again (nothing is taken then).
    pub fn take(&mut self, len: usize) -> Result<(), Duration> {
        self.take_at(len, Instant::now())
    }

    fn take_at(&mut self, len: usize, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        self.bytes.refill(elapsed);
        self.frames.refill(elapsed);
        let byte_cost = self.bytes.cost(len as u64);
        let frame_cost = self.frames.cost(1);
        let wait = [(&self.bytes, byte_cost), (&self.frames, frame_cost)]
            .iter()
            .filter_map(|(bucket, cost)| cost.map(|c| bucket.wait_for(c)))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(cost) = byte_cost {
            self.bytes.tokens -= cost;
        }
        if let Some(cost) = frame_cost {
            self.frames.tokens -= cost;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let mut limiter = RateLimiter::new(RateLimit::default());
        for _ in 0..10_000 {
            assert_eq!(limiter.take(65_535), Ok(()));
        }
    }

    #[test]
    fn a_frame_rate_allows_a_burst_then_paces() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit {
            bytes_per_sec: 0,
            packets_per_sec: 10,
        });
        limiter.refilled = start;
        for _ in 0..10 {
            assert_eq!(limiter.take_at(100, start), Ok(()));
        }
        let wait = limiter.take_at(100, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(limiter.take_at(100, start + wait), Ok(()));
    }

    #[test]
    fn a_byte_rate_paces_and_lets_a_frame_bigger_than_the_bucket_through_when_full() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit {
            bytes_per_sec: 1000,
            packets_per_sec: 0,
        });
        limiter.refilled = start;
        assert_eq!(limiter.take_at(600, start), Ok(()));
        assert_eq!(limiter.take_at(600, start), Err(Duration::from_millis(200)));
        let later = start + Duration::from_millis(200);
        assert_eq!(limiter.take_at(600, later), Ok(()));
        // 1500 bytes cost a full bucket of 1000: wait until it is full again.
        assert_eq!(limiter.take_at(1500, later), Err(Duration::from_secs(1)));
        assert_eq!(
            limiter.take_at(1500, later + Duration::from_secs(1)),
            Ok(())
        );
    }
}
