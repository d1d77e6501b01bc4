//! Retry as a layer: [`Retry::drive`] calls its inner [`Attempt`] service once per attempt
//! and decides, after each failure, whether another attempt may follow: the policy must list
//! the failure, the method must be safe to resend (or nothing reached the app), the body must
//! still be replayable, the destination's budget must allow it, and the backoff must end
//! before the route's deadline. The inner service knows nothing of retries; it is told only
//! whether its attempt is the last (so it neither cuts it at the per-try timeout nor turns
//! its response into a failure).
//!
//! Not `tower::retry`: its policy clones whole requests, while our body is a [`ReplayBody`]
//! handle whose clones supersede each other and which gives up past a cap; backoff and the
//! per-try timeouts share one deadline with the request; and a `tower::Service` per layer
//! would box a future per request. The inner service is our own small trait, with the same
//! shape: a request in, an outcome out.
//!
//! [`ReplayBody`]: super::replay::ReplayBody

use super::budget::RetryBudget;
use super::policy::{CompiledRetry, Failure};
use super::source::Source;
use crate::body::RequestBody;
use prometheus::IntCounter;
use std::future::Future;
use tokio::time::Instant;

/// One attempt to send: its number (1 is the original), whether no retry can follow, and its
/// request body.
pub struct Try {
    pub n: u32,
    pub last: bool,
    /// Retries are possible for this request, so attempts are numbered for the upstream.
    pub numbered: bool,
    pub body: RequestBody,
}

/// What one attempt came to.
pub enum Tried<R, E> {
    /// A response to pass on.
    Done(R),
    /// A failure the policy may retry, with the response (if any) to pass on when it doesn't.
    Failed(Failure, Option<R>),
    /// The request is over (its deadline passed): no retry can help.
    Fatal(E),
}

/// The service a retry drives: sends one attempt.
pub trait Attempt {
    type Response;
    type Error;

    fn call(&mut self, attempt: Try) -> impl Future<Output = Tried<Self::Response, Self::Error>>;

    /// A retry of the failed attempt is decided, before its backoff; the attempt ends here
    /// (`response`, if any, is dropped right after).
    fn retrying(&mut self, failure: Failure, response: Option<&Self::Response>);
}

/// Why the request ended without a response to pass on.
#[derive(Debug, PartialEq, Eq)]
pub enum Exhausted<E> {
    Fatal(E),
    /// The last attempt failed this way.
    GaveUp(Failure),
}

/// What happened to failed attempts, by what came next.
pub struct RetryCounters {
    pub retried: IntCounter,
    pub budget_exhausted: IntCounter,
    /// The method is not safe to resend.
    pub not_retryable: IntCounter,
    pub body_too_large: IntCounter,
}

/// A route's retries for one request.
pub struct Retry<'a> {
    pub policy: &'a CompiledRetry,
    pub budget: &'a RetryBudget,
    pub counters: &'a RetryCounters,
    /// At most this many attempts: the policy's, or 1 when the request cannot be resent at
    /// all (an upgrade).
    pub attempts: u32,
}

impl<'a> Retry<'a> {
    pub fn new(
        policy: &'a CompiledRetry,
        budget: &'a RetryBudget,
        counters: &'a RetryCounters,
        resendable: bool,
    ) -> Self {
        Self {
            policy,
            budget,
            counters,
            attempts: if resendable { policy.attempts } else { 1 },
        }
    }

    pub fn may_retry(&self) -> bool {
        self.attempts > 1
    }

    /// Drives `inner` until an attempt gives a response to pass on, or no retry may follow.
    pub async fn drive<A: Attempt>(
        &self,
        inner: &mut A,
        method: &http::Method,
        mut source: Source,
        deadline: Instant,
    ) -> Result<A::Response, Exhausted<A::Error>> {
        let numbered = self.may_retry();
        if numbered {
            // Only requests that could be retried earn the budget its share.
            self.budget.deposit();
        }
        let mut n = 1;
        let mut body = source.next_attempt(1);
        loop {
            let last = n >= self.attempts;
            let Some(b) = body.take() else {
                // Unreachable today: the retry's body is taken before its backoff, and only
                // a present one lets the retry happen.
                self.counters.body_too_large.inc();
                return Err(Exhausted::GaveUp(Failure::Reset));
            };
            let (failure, kept) = match inner
                .call(Try {
                    n,
                    last,
                    numbered,
                    body: b,
                })
                .await
            {
                Tried::Done(res) => return Ok(res),
                Tried::Fatal(e) => return Err(Exhausted::Fatal(e)),
                Tried::Failed(f, kept) => (f, kept),
            };
            let delay = if last || !self.allowed(method, failure, &source) {
                None
            } else {
                let d = self.policy.backoff.delay(n);
                if Instant::now() + d < deadline {
                    // Take the retry's body before the backoff: that supersedes the failed
                    // attempt's, so its connection stops pulling the client's body meanwhile.
                    body = source.next_attempt(n + 1);
                    if body.is_none() {
                        self.counters.body_too_large.inc();
                    }
                    body.is_some().then_some(d)
                } else {
                    None
                }
            };
            match (delay, kept) {
                (Some(d), kept) => {
                    self.counters.retried.inc();
                    inner.retrying(failure, kept.as_ref());
                    drop(kept);
                    tokio::time::sleep(d).await;
                    n += 1;
                }
                (None, Some(res)) => return Ok(res),
                (None, None) => return Err(Exhausted::GaveUp(failure)),
            }
        }
    }

    /// Whether this failure may be retried at all, counting why not.
    fn allowed(&self, method: &http::Method, failure: Failure, source: &Source) -> bool {
        if !self.policy.retryable(failure) {
            false
        } else if !self.policy.safe(method, failure) {
            self.counters.not_retryable.inc();
            false
        } else if !source.replayable() {
            self.counters.body_too_large.inc();
            false
        } else if !self.budget.try_withdraw() {
            self.counters.budget_exhausted.inc();
            false
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::{RetryOn, RetryPolicy};
    use std::collections::VecDeque;
    use std::time::Duration;

    fn counters() -> RetryCounters {
        let c = |n: &str| IntCounter::new(n, n).expect("counter");
        RetryCounters {
            retried: c("retried"),
            budget_exhausted: c("budget_exhausted"),
            not_retryable: c("not_retryable"),
            body_too_large: c("body_too_large"),
        }
    }

    fn policy(attempts: u32, on: &[RetryOn]) -> CompiledRetry {
        CompiledRetry::new(&RetryPolicy {
            attempts,
            on: on.to_vec(),
            backoff: outrigger_config::Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_millis(100),
            },
            ..RetryPolicy::default()
        })
    }

    fn budget(min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&outrigger_config::RetryBudget {
            ratio: 0.0,
            min_per_second,
            window: Duration::from_secs(1),
        })
    }

    /// An inner service that plays back outcomes and notes when each attempt started.
    struct Script {
        outcomes: VecDeque<Tried<&'static str, &'static str>>,
        calls: Vec<(u32, bool, bool, Instant)>,
        retried: Vec<(Failure, Option<&'static str>)>,
    }

    impl Script {
        fn new(outcomes: Vec<Tried<&'static str, &'static str>>) -> Self {
            Self {
                outcomes: outcomes.into(),
                calls: Vec::new(),
                retried: Vec::new(),
            }
        }
    }

    impl Attempt for Script {
        type Response = &'static str;
        type Error = &'static str;

        async fn call(&mut self, t: Try) -> Tried<&'static str, &'static str> {
            self.calls.push((t.n, t.last, t.numbered, Instant::now()));
            self.outcomes.pop_front().expect("an outcome scripted")
        }

        fn retrying(&mut self, failure: Failure, response: Option<&&'static str>) {
            self.retried.push((failure, response.copied()));
        }
    }

    const CONNECT: Tried<&str, &str> = Tried::Failed(Failure::ConnectFailure, None);

    fn gateway(res: &'static str) -> Tried<&'static str, &'static str> {
        Tried::Failed(Failure::Status(http::StatusCode::BAD_GATEWAY), Some(res))
    }

    async fn drive(
        retry: &Retry<'_>,
        script: &mut Script,
        method: http::Method,
    ) -> Result<&'static str, Exhausted<&'static str>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        retry.drive(script, &method, Source::Empty, deadline).await
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_an_attempt_succeeds_backing_off_between() {
        let p = policy(3, &[RetryOn::ConnectFailure]);
        let (b, c) = (budget(100), counters());
        let retry = Retry::new(&p, &b, &c, true);
        let mut s = Script::new(vec![CONNECT, CONNECT, Tried::Done("ok")]);
        assert_eq!(drive(&retry, &mut s, http::Method::GET).await, Ok("ok"));
        let numbers: Vec<_> = s.calls.iter().map(|c| (c.0, c.1, c.2)).collect();
        assert_eq!(
            numbers,
            [(1, false, true), (2, false, true), (3, true, true)]
        );
        // Equal jitter: each backoff is between half the ceiling and the ceiling.
        for w in s.calls.windows(2) {
            let gap = w[1].3 - w[0].3;
            assert!(
                (Duration::from_millis(50)..=Duration::from_millis(100)).contains(&gap),
                "{gap:?}"
            );
        }
        assert_eq!(c.retried.get(), 2);
        assert_eq!(s.retried.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_attempt_s_response_is_passed_on() {
        let p = policy(2, &[RetryOn::GatewayError]);
        let (b, c) = (budget(100), counters());
        let retry = Retry::new(&p, &b, &c, true);
        let mut s = Script::new(vec![gateway("first 502"), gateway("second 502")]);
        assert_eq!(
            drive(&retry, &mut s, http::Method::GET).await,
            Ok("second 502")
        );
        assert_eq!(
            s.retried,
            [(
                Failure::Status(http::StatusCode::BAD_GATEWAY),
                Some("first 502")
            )]
        );
        let mut s = Script::new(vec![CONNECT, CONNECT]);
        assert_eq!(
            drive(&retry, &mut s, http::Method::GET).await,
            Err(Exhausted::GaveUp(Failure::ConnectFailure))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_safe_requests_are_resent_after_reaching_the_app() {
        let p = policy(3, &[RetryOn::GatewayError, RetryOn::ConnectFailure]);
        let (b, c) = (budget(100), counters());
        let retry = Retry::new(&p, &b, &c, true);
        let mut s = Script::new(vec![gateway("502")]);
        assert_eq!(drive(&retry, &mut s, http::Method::POST).await, Ok("502"));
        assert_eq!(c.not_retryable.get(), 1);
        // A connect failure never reached the app: safe for any method.
        let mut s = Script::new(vec![CONNECT, Tried::Done("ok")]);
        assert_eq!(drive(&retry, &mut s, http::Method::POST).await, Ok("ok"));
    }

    #[tokio::test(start_paused = true)]
    async fn unlisted_failures_are_not_retried() {
        let p = policy(3, &[RetryOn::ConnectFailure]);
        let (b, c) = (budget(100), counters());
        let retry = Retry::new(&p, &b, &c, true);
        let mut s = Script::new(vec![gateway("502")]);
        assert_eq!(drive(&retry, &mut s, http::Method::GET).await, Ok("502"));
        assert_eq!(s.calls.len(), 1);
        assert_eq!(c.retried.get() + c.not_retryable.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries() {
        let p = policy(2, &[RetryOn::ConnectFailure]);
        // A reserve of 2 retries over the window, nothing earned (ratio 0).
        let (b, c) = (budget(2), counters());
        let retry = Retry::new(&p, &b, &c, true);
        let mut retried = 0;
        for _ in 0..5 {
            let mut s = Script::new(vec![CONNECT, CONNECT]);
            let _ = drive(&retry, &mut s, http::Method::GET).await;
            retried += s.calls.len() - 1;
        }
        assert_eq!(retried, 2);
        assert_eq!(c.budget_exhausted.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_whose_backoff_would_outlast_the_deadline() {
        let p = policy(3, &[RetryOn::ConnectFailure]);
        let (b, c) = (budget(100), counters());
        let retry = Retry::new(&p, &b, &c, true);
        let mut s = Script::new(vec![CONNECT]);
        let deadline = Instant::now() + Duration::from_millis(40);
        let out = retry
            .drive(&mut s, &http::Method::GET, Source::Empty, deadline)
            .await;
        assert_eq!(out, Err(Exhausted::GaveUp(Failure::ConnectFailure)));
        assert_eq!(c.retried.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_outcome_ends_at_once_and_one_shot_requests_are_not_numbered() {
        let p = policy(3, &[RetryOn::ConnectFailure]);
        let (b, c) = (budget(100), counters());
        let retry = Retry::new(&p, &b, &c, true);
        let mut s = Script::new(vec![Tried::Fatal("deadline")]);
        assert_eq!(
            drive(&retry, &mut s, http::Method::GET).await,
            Err(Exhausted::Fatal("deadline"))
        );
        // An upgrade cannot be resent: one attempt, the last, unnumbered.
        let once = Retry::new(&p, &b, &c, false);
        let mut s = Script::new(vec![CONNECT]);
        assert_eq!(
            drive(&once, &mut s, http::Method::GET).await,
            Err(Exhausted::GaveUp(Failure::ConnectFailure))
        );
        assert_eq!(
            s.calls.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
            [(true, false)]
        );
    }
}
