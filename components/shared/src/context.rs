//! The request a piece of work belongs to: its id (in `X-Request-Id`, 5xx
//! bodies and log lines), when it started, and its deadline.
//!
//! A WASIp3 instance serves many requests, up to 16 at once, so none of this
//! can be a static. Each request's future runs inside [`scoped`], which makes
//! its context the current one while (and only while) it is polled: the
//! executor polls one future at a time, so a request only ever sees its own.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One request's identity and clock.
#[derive(Debug)]
pub struct RequestContext {
    pub id: String,
    pub started: Instant,
    /// The same moment on the wall clock (a question's message is stamped with it).
    pub started_at: std::time::SystemTime,
    /// When the request must be over (`request_timeout_ms` after it started),
    /// once the settings are known.
    deadline: std::cell::Cell<Option<Instant>>,
}

impl RequestContext {
    /// A new request, started now, with a fresh random id.
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            id: crate::random_token(),
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
            deadline: std::cell::Cell::new(None),
        })
    }

    /// A context for work on behalf of a caller (a composed dependency's
    /// call), which must be over within `timeout`.
    pub fn within(timeout: Duration) -> Rc<Self> {
        let context = Self::new();
        context.deadline.set(Some(context.started + timeout));
        context
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RequestContext>>> = const { RefCell::new(None) };
}

/// The context of the request being polled now, if any.
pub fn current() -> Option<Rc<RequestContext>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// `work`, run as part of `context`'s request.
pub fn scoped<F: Future + 'static>(context: Rc<RequestContext>, work: F) -> Scoped<F::Output> {
    Scoped {
        context,
        work: Box::pin(work),
    }
}

/// A composed dependency's export (the limiter's check, the recorder's
/// batch): `work`, named as `component`'s in the log, as part of a call of
/// its own that must be over within the caller's `timeout_ms`.
pub async fn serve_caller<T>(
    component: &'static str,
    timeout_ms: u32,
    work: impl Future<Output = T> + 'static,
) -> T {
    crate::log::set_component(component);
    let context = RequestContext::within(Duration::from_millis(timeout_ms.into()));
    scoped(context, work).await
}

/// A future that is its request's while polled (see [`scoped`]).
pub struct Scoped<T> {
    context: Rc<RequestContext>,
    work: Pin<Box<dyn Future<Output = T>>>,
}

impl<T> Future for Scoped<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let previous = CURRENT.with(|c| c.replace(Some(self.context.clone())));
        let polled = self.work.as_mut().poll(cx);
        CURRENT.with(|c| *c.borrow_mut() = previous);
        polled
    }
}

/// This request's id (`-` outside any request).
pub fn request_id() -> String {
    current().map_or_else(|| "-".to_string(), |c| c.id.clone())
}

/// When this request started (now, outside any request).
pub fn request_started() -> Instant {
    current().map_or_else(Instant::now, |c| c.started)
}

/// When this request started, in Unix seconds (now, outside any request).
pub fn request_started_at() -> f64 {
    current()
        .map_or_else(std::time::SystemTime::now, |c| c.started_at)
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Fixes the request's deadline at `request_timeout` after it started.
pub fn set_request_timeout(request_timeout: Duration) {
    if let Some(context) = current() {
        // `Duration::MAX` (a batch without a question's deadline): a day.
        let deadline = context
            .started
            .checked_add(request_timeout)
            .unwrap_or(context.started + Duration::from_secs(86_400));
        context.deadline.set(Some(deadline));
    }
}

/// What a request's bookkeeping may take once its answer is decided (the
/// exchange's history write, its metrics batch, before the response leaves):
/// its own allowance, whatever was left of the request's deadline, and
/// bounded, so that a slow Postgres holds the answer and the instance a few
/// seconds, not for ever.
pub const BOOKKEEPING: Duration = Duration::from_secs(5);

/// The longest one Redis or Postgres call of a request may wait: far above
/// what either takes when well (a millisecond or two), and short enough that
/// a silent one costs a request some latency, not its answer.
pub const STORE_CALL: Duration = Duration::from_secs(2);

/// The answer is decided: its bookkeeping gets [`BOOKKEEPING`] from now,
/// whatever was left of the request's own deadline.
pub fn answer_decided() {
    if let Some(context) = current() {
        context.deadline.set(Some(Instant::now() + BOOKKEEPING));
    }
}

/// The longest a request waits when no deadline was set (before its
/// settings are read): Spin's own default would be none at all.
const UNSET_DEADLINE: Duration = Duration::from_secs(30);

/// What is left of the request's deadline (zero once it has passed).
pub fn time_left() -> Duration {
    match current() {
        Some(context) => context
            .deadline
            .get()
            .unwrap_or(context.started + UNSET_DEADLINE)
            .saturating_duration_since(Instant::now()),
        None => UNSET_DEADLINE,
    }
}

/// What a call may wait: its own timeout, or what is left of the request's
/// deadline if that is less.
pub fn bounded(per_call: Duration) -> Duration {
    per_call.min(time_left())
}

/// `work`, or `None` once `limit` has passed: the work is then dropped, and
/// with it the host call it was waiting on.
pub async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    use futures::future::{select, Either};
    if limit.is_zero() {
        return None;
    }
    let work = std::pin::pin!(work);
    let timer = std::pin::pin!(spin_sdk::time::sleep(limit));
    match select(work, timer).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => None,
    }
}

/// `work`, with its task woken once after its first poll, so that the
/// executor polls again at once. wit-bindgen 0.57's executor adds a task
/// spawned during a poll (spin-sdk spawns the writer of an outgoing request's
/// body) only after that poll, and then sleeps until an event: without the
/// wake-up the body's writer would not run until the host answered, and the
/// host waits for the body.
pub fn polled_again<F: Future>(work: F) -> PolledAgain<F> {
    PolledAgain {
        work: Box::pin(work),
        first: true,
    }
}

pub struct PolledAgain<F: Future> {
    work: Pin<Box<F>>,
    first: bool,
}

impl<F: Future> Future for PolledAgain<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = self.work.as_mut().poll(cx);
        if polled.is_pending() && std::mem::take(&mut self.first) {
            cx.waker().wake_by_ref();
        }
        polled
    }
}
