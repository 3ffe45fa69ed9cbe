//! The one place that decides what is transient and how long to wait before trying again.

use std::future::Future;
use std::io;
use std::time::Duration;

use crate::Result;

/// How often and how patiently transient failures are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles on each further retry.
    pub base: Duration,
    /// Upper bound for one delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, base: Duration::from_millis(500), max: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): exponential, capped, with jitter in [d/2, d].
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << retry.saturating_sub(1).min(16)).min(self.max);
        let half = exp / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64))
    }
}

/// Runs `op` until it succeeds, fails permanently, or the attempts are used up.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < policy.attempts.max(1) => {
                let delay = policy.delay(attempt);
                tracing::warn!(what, attempt, delay_ms = delay.as_millis() as u64, error = %e, "transient failure; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e.with_attempts(attempt)),
        }
    }
}

/// Blocking variant for sources driven by synchronous libraries (libgit2).
pub fn retry_blocking<T>(policy: &RetryPolicy, what: &str, op: impl FnMut() -> Result<T>) -> Result<T> {
    retry_blocking_until(policy, what, None, op)
}

/// [`retry_blocking`] that tries no more once `deadline` has passed.
pub(crate) fn retry_blocking_until<T>(
    policy: &RetryPolicy,
    what: &str,
    deadline: Option<std::time::Instant>,
    mut op: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut attempt = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e)
                if e.is_transient()
                    && attempt < policy.attempts.max(1)
                    && deadline.is_none_or(|d| std::time::Instant::now() + policy.delay(attempt) < d) =>
            {
                let delay = policy.delay(attempt);
                tracing::warn!(what, attempt, delay_ms = delay.as_millis() as u64, error = %e, "transient failure; retrying");
                std::thread::sleep(delay);
                attempt += 1;
            }
            Err(e) => return Err(e.with_attempts(attempt)),
        }
    }
}

/// Runs `work` for at most `deadline`; at the deadline, a transient error naming it (the same
/// text every time, so a status does not churn). Work on blocking threads (libgit2) is not
/// stopped by this; those paths watch the deadline themselves.
pub(crate) async fn within<T>(
    ctx: &crate::error::Ctx,
    deadline: Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(deadline, work).await.unwrap_or_else(|_| Err(deadline_error(ctx, deadline)))
}

/// "no answer within {N}s", with N the configured deadline.
pub(crate) fn deadline_error(ctx: &crate::error::Ctx, deadline: Duration) -> crate::Error {
    ctx.transient(format!("no answer within {}s", deadline.as_secs_f64()))
}

/// I/O errors that come from the network and may go away.
pub(crate) fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset
            | ConnectionRefused
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | TimedOut
            | UnexpectedEof
            | Interrupted
            | WouldBlock
    )
}

/// HTTP statuses that may go away: server errors, timeouts, throttling.
pub(crate) fn status_is_transient(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Library error texts that describe network trouble (used where a library gives only text).
pub(crate) fn text_is_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "connection reset",
        "connection refused",
        "connection aborted",
        "broken pipe",
        "timed out",
        "timeout",
        "unexpected eof",
        "early eof",
        "error sending request",
        "error decoding response body",
        "connection closed",
        "incomplete",
        "server error",
        "service unavailable",
        "bad gateway",
        "status code: 5",
        "failed to connect",
        "could not connect",
        "failed to resolve address",
        "failed to send request",
        "failed to receive response",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Ctx;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy { attempts: 10, base: Duration::from_millis(100), max: Duration::from_secs(1) };
        for r in 1..10 {
            let d = p.delay(r);
            let exp = (Duration::from_millis(100) * (1 << (r - 1))).min(Duration::from_secs(1));
            assert!(d >= exp / 2 && d <= exp, "retry {r}: {d:?}");
        }
    }

    #[tokio::test]
    async fn retries_transient_only() {
        let p = RetryPolicy { attempts: 3, base: Duration::from_millis(1), max: Duration::from_millis(2) };
        let calls = AtomicU32::new(0);
        let ctx = Ctx::new(0, "test");
        let r: Result<()> = retry(&p, "t", || {
            calls.fetch_add(1, Ordering::SeqCst);
            let e = ctx.transient("reset");
            async move { Err(e) }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(r.unwrap_err().to_string().contains("3 attempt"));

        calls.store(0, Ordering::SeqCst);
        let r: Result<()> = retry(&p, "t", || {
            calls.fetch_add(1, Ordering::SeqCst);
            let e = ctx.auth("check");
            async move { Err(e) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn classifies_text() {
        assert!(text_is_transient("Connection reset by peer"));
        assert!(text_is_transient("unexpected http status code: 502"));
        assert!(!text_is_transient("authentication required"));
        assert!(status_is_transient(503) && !status_is_transient(404));
    }
}
