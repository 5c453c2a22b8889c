//! One client connection: HTTP/1.1 served by hyper, watched for slow and idle clients, with the
//! in-flight cap applied to each request; and the short answer to connections over the cap.
//!
//! # Timeouts
//!
//! A small watchdog runs next to each connection and closes it when:
//!
//! * **request read** (`--request-read-timeout`): the first bytes of a request arrived, but its
//!   headers did not follow within the timeout (the slowloris attack: half a header, then
//!   nothing). The body has the same time from the end of the headers, enforced as the handler
//!   reads it ([`DeadlineBody`]): a body that is late fails the request with `400`;
//! * **idle** (`--idle-timeout`): no request arrived on a kept-alive connection for that long.
//!
//! A connection with a request being handled or a response being sent (a blocking acquire, an
//! event stream) is never closed by the watchdog. Both closes are counted in
//! `lockd_connection_timeouts_total{timeout}`.
//!
//! # TLS
//!
//! With TLS on, the handshake comes first, within the request read timeout (counted as a
//! `request_read` timeout when it is late), and the connection is then served as above over
//! the encrypted stream. A connection over the cap is handshaken too, so its client can read
//! the `503`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::limits::{Limit, LimitExceeded, Slot, Usage, RETRY_AFTER_SECS};
use crate::metrics::Metrics;
use crate::tls::{self, Certificates};

/// `Activity::head_started` when no request has started arriving.
const NO_HEAD: u64 = u64::MAX;

/// Longest time spent answering and draining one connection refused over the connection cap.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// Refused connections being answered at once; beyond this they are closed without an answer,
/// so a flood of connections cannot hold more descriptors than this over the cap.
const MAX_REFUSING: usize = 256;
/// Most bytes read and thrown away from a refused connection before it is closed.
const REFUSAL_DRAIN: usize = 64 * 1024;

/// What every connection shares: the router, the caps, the timeouts.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: axum::Router,
    pub(crate) usage: Arc<Usage>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) request_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// Refused connections being answered now.
    pub(crate) refusing: AtomicUsize,
    /// What both listeners serve TLS with; `None`: plaintext.
    pub(crate) tls: Option<Arc<Certificates>>,
}

/// What the watchdog needs to know about one connection, kept up to date by the I/O wrapper
/// and the service. Times are milliseconds since `base`.
#[derive(Debug)]
struct Activity {
    base: Instant,
    /// Requests handed to the router whose response has not been sent in full.
    active: AtomicUsize,
    /// When the first bytes of a request not yet handed to the router arrived ([`NO_HEAD`]:
    /// none).
    head_started: AtomicU64,
    /// When the connection last had nothing to do.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            head_started: AtomicU64::new(NO_HEAD),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.base + Duration::from_millis(millis)
    }

    /// Bytes arrived: if no request is being handled they start (or continue) the next one.
    fn bytes_arrived(&self) {
        if self.active.load(Ordering::Acquire) == 0 {
            let _ = self.head_started.compare_exchange(
                NO_HEAD,
                self.now(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// The router took a request: its head arrived in time.
    fn request_started(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NO_HEAD, Ordering::Release);
        Active(Arc::clone(self))
    }

    /// Whether a timeout has passed, or else when to look again.
    fn check(&self, read_timeout: Duration, idle_timeout: Duration) -> Result<Instant, Timeout> {
        let now = Instant::now();
        if self.active.load(Ordering::Acquire) > 0 {
            return Ok(now + read_timeout.min(idle_timeout));
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != NO_HEAD {
            let due = self.at(head) + read_timeout;
            return if due <= now {
                Err(Timeout::RequestRead)
            } else {
                Ok(due)
            };
        }
        let due = self.at(self.idle_since.load(Ordering::Acquire)) + idle_timeout;
        if due <= now {
            return Err(Timeout::Idle);
        }
        // A request may start arriving while the watchdog sleeps: looking again within one
        // read timeout closes a slow one at most that late.
        Ok(due.min(now + read_timeout))
    }
}

/// A request being handled or answered; the connection is idle again once all are dropped.
#[derive(Debug)]
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Release);
        activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    RequestRead,
    Idle,
}

impl Timeout {
    fn label(self) -> &'static str {
        match self {
            Timeout::RequestRead => "request_read",
            Timeout::Idle => "idle",
        }
    }
}

/// The connection's stream (TCP, or TLS over it), telling the watchdog when bytes arrive.
#[derive(Debug)]
struct WatchedIo<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The request body did not arrive within `--request-read-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (--request-read-timeout)")]
pub(crate) struct BodyTimeout(Duration);

/// A request body that fails with [`BodyTimeout`] once its time is up. The timer is only set
/// if the body is not there at the first look (small bodies usually come with the headers).
#[derive(Debug)]
struct DeadlineBody {
    inner: Incoming,
    started: Instant,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        let deadline = this.started + this.limit;
        let sleep = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request [`Active`] until it has been sent (or dropped).
#[derive(Debug)]
struct TrackedBody {
    inner: Body,
    _active: Active,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Handles one request: the in-flight cap, the body deadline, the router.
async fn handle(
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    request: hyper::Request<Incoming>,
) -> Response {
    let active = activity.request_started();
    // Probes and scrapes (/metrics, /healthz, /readyz) stay answerable under load.
    let in_flight: Option<Slot> = if request.uri().path().starts_with("/v1/") {
        match shared.usage.take(Limit::InFlight) {
            Ok(slot) => Some(slot),
            Err(refused) => {
                let response = ApiError::Busy(refused).into_response();
                return response.map(|inner| {
                    Body::new(TrackedBody {
                        inner,
                        _active: active,
                    })
                });
            }
        }
    } else {
        None
    };
    let limit = shared.request_read_timeout;
    let request = request.map(|inner| DeadlineBody {
        inner,
        started: Instant::now(),
        limit,
        deadline: None,
    });
    let response = match shared.router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    drop(in_flight);
    response.map(|inner| {
        Body::new(TrackedBody {
            inner,
            _active: active,
        })
    })
}

/// Serves one accepted connection until the client or the server closes it, or a timeout does.
/// `_connection` is its unit of `--max-connections`. With TLS, the handshake comes first.
pub(crate) async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    _connection: Slot,
    mut stop: watch::Receiver<bool>,
) {
    let Some(certificates) = shared.tls.clone() else {
        return serve_stream(stream, shared, stop).await;
    };
    let peer = stream.peer_addr().ok();
    let handshake = tokio::time::timeout(
        shared.request_read_timeout,
        certificates.http().accept(stream),
    );
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tls::log_handshake_failure(&e, peer, "http");
                return;
            }
            Err(_) => {
                shared.metrics.connection_timeout(Timeout::RequestRead.label());
                tracing::debug!(peer = ?peer, "closing a connection whose TLS handshake was late");
                return;
            }
        },
        // Shutting down: nothing was asked on this connection yet.
        () = async { drop(stop.wait_for(|stopped| *stopped).await) } => return,
    };
    serve_stream(stream, shared, stop).await;
}

/// Serves HTTP/1.1 on a connection's (plain or TLS) stream, with the watchdog.
async fn serve_stream<S>(stream: S, shared: Arc<Shared>, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = {
        let shared = Arc::clone(&shared);
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request| {
            let response = handle(Arc::clone(&shared), Arc::clone(&activity), request);
            async move { Ok::<_, Infallible>(response.await) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        // The watchdog times reads; hyper's own header timer would also cut idle connections.
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    let (read_timeout, idle_timeout) = (shared.request_read_timeout, shared.idle_timeout);
    loop {
        let idle = activity.active.load(Ordering::Acquire) == 0;
        if stopping && idle {
            // Shutting down and nothing in progress: no request is lost by closing now.
            return;
        }
        let next_check = match activity.check(read_timeout, idle_timeout) {
            Ok(next) => next,
            Err(timeout) => {
                shared.metrics.connection_timeout(timeout.label());
                tracing::debug!(
                    timeout = timeout.label(),
                    "closing a slow or idle connection"
                );
                return;
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = async { drop(stop.wait_for(|stopped| *stopped).await) }, if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(next_check) => {}
        }
    }
}

/// Answers a connection over `--max-connections` with one `503 unavailable` and closes it, in
/// the background and bounded in time (TLS handshake included); beyond [`MAX_REFUSING`] at
/// once, closes it at once.
pub(crate) fn refuse(stream: TcpStream, refused: LimitExceeded, shared: &Arc<Shared>) {
    if shared.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        shared.refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let body = refused.envelope().to_string();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            match &shared.tls {
                None => answer_and_close(stream, answer.as_bytes()).await,
                Some(certificates) => {
                    let stream = certificates.http().accept(stream).await?;
                    answer_and_close(stream, answer.as_bytes()).await
                }
            }
        })
        .await;
        shared.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Writes `answer`, closes the sending side, and reads (a bounded amount of) what the client
/// sent before closing.
async fn answer_and_close<S>(mut stream: S, answer: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    // Read what the client sent before closing, so the kernel does not reset the connection
    // and lose the answer.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN {
        match stream.read(&mut sink).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}
