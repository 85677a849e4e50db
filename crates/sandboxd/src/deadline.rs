//! Call deadlines of the gRPC port: the `grpc-timeout` request header parsed as Go's gRPC server
//! parses it, and `DEADLINE_EXCEEDED` answered when the deadline passes, whether the handler is
//! still working or its response is still streaming.
//!
//! When the deadline passes, the handler (or its response stream) is dropped, which kills the
//! process it started. A malformed header is refused with HTTP 400 and `INTERNAL`
//! ("malformed grpc-timeout: ..."), before any routing, as Go's server does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Frame;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;

/// The message of a passed deadline, as Go's `status.FromContextError` words it.
pub(crate) const DEADLINE_EXCEEDED: &str = "context deadline exceeded";

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value like grpc-go: one to eight ASCII digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`). The error text is grpc-go's.
pub(crate) fn parse_timeout(value: &[u8]) -> Result<Duration, String> {
    let text = String::from_utf8_lossy(value);
    if value.len() < 2 {
        return Err(format!("transport: timeout string is too short: {text:?}"));
    }
    if value.len() > 9 {
        return Err(format!("transport: timeout string is too long: {text:?}"));
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let unit = match unit[0] {
        b'H' => Duration::from_secs(3600),
        b'M' => Duration::from_secs(60),
        b'S' => Duration::from_secs(1),
        b'm' => Duration::from_millis(1),
        b'u' => Duration::from_micros(1),
        b'n' => Duration::from_nanos(1),
        _ => {
            return Err(format!(
                "transport: timeout unit is not recognized: {text:?}"
            ));
        }
    };
    let digits_text = String::from_utf8_lossy(digits);
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "strconv.ParseUint: parsing {digits_text:?}: invalid syntax"
        ));
    }
    // At most eight digits: the number fits, and so does the product.
    let count: u32 = digits_text
        .parse()
        .map_err(|_| format!("strconv.ParseUint: parsing {digits_text:?}: invalid syntax"))?;
    Ok(unit * count)
}

/// The deadline a request asks for; with several `grpc-timeout` headers the last one counts.
fn requested_deadline(headers: &HeaderMap) -> Result<Option<Instant>, String> {
    let mut timeout = None;
    for value in headers.get_all(GRPC_TIMEOUT) {
        timeout = Some(parse_timeout(value.as_bytes())?);
    }
    // A deadline beyond what the clock can represent is no deadline.
    Ok(timeout.and_then(|t| Instant::now().checked_add(t)))
}

/// Wraps the gRPC routes: enforces each call's deadline (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    pub(crate) fn new(inner: S) -> Self {
        Deadline { inner }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S, B> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let deadline = match requested_deadline(req.headers()) {
            Ok(Some(deadline)) => deadline,
            Ok(None) => return Box::pin(self.inner.call(req)),
            Err(e) => {
                let mut resp = Status::internal(format!("malformed grpc-timeout: {e}")).into_http();
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                return Box::pin(std::future::ready(Ok(resp)));
            }
        };
        if deadline <= Instant::now() {
            return Box::pin(std::future::ready(Ok(exceeded().into_http())));
        }
        let method = req.uri().path().to_owned();
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(resp) => resp.map(|resp| resp.map(|body| DeadlineBody::wrap(body, deadline))),
                Err(_) => {
                    tracing::debug!(method, "gRPC call passed its deadline");
                    Ok(exceeded().into_http())
                }
            }
        })
    }
}

fn exceeded() -> Status {
    Status::deadline_exceeded(DEADLINE_EXCEEDED)
}

/// A response body that ends with `DEADLINE_EXCEEDED` trailers when the deadline passes.
struct DeadlineBody {
    /// `None` once the body has ended.
    inner: Option<Body>,
    sleep: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn wrap(inner: Body, deadline: Instant) -> Body {
        Body::new(DeadlineBody {
            inner: Some(inner),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        })
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // The deadline goes first, so a stream that always has output cannot outrun it.
        if this.sleep.as_mut().poll(cx).is_ready() {
            // Dropping the stream ends the call: its process is killed.
            this.inner = None;
            let mut trailers = HeaderMap::new();
            let _ = exceeded().add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if frame.is_none() {
            this.inner = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let ok = |s: &str| parse_timeout(s.as_bytes()).unwrap();
        assert_eq!(ok("1H"), Duration::from_secs(3600));
        assert_eq!(ok("2M"), Duration::from_secs(120));
        assert_eq!(ok("3S"), Duration::from_secs(3));
        assert_eq!(ok("999m"), Duration::from_millis(999));
        assert_eq!(ok("7u"), Duration::from_micros(7));
        assert_eq!(ok("00000005n"), Duration::from_nanos(5));
        assert_eq!(ok("0S"), Duration::ZERO);
        assert_eq!(ok("99999999H"), Duration::from_secs(99_999_999 * 3600));
    }

    #[test]
    fn refuses_what_grpc_go_refuses() {
        let err = |s: &[u8]| parse_timeout(s).unwrap_err();
        assert_eq!(err(b"S"), "transport: timeout string is too short: \"S\"");
        assert_eq!(
            err(b"123456789S"),
            "transport: timeout string is too long: \"123456789S\""
        );
        assert_eq!(
            err(b"10x"),
            "transport: timeout unit is not recognized: \"10x\""
        );
        assert_eq!(
            err(b"1.5S"),
            "strconv.ParseUint: parsing \"1.5\": invalid syntax"
        );
        // Unlike Rust's integer parsing, Go's ParseUint takes no sign.
        assert_eq!(
            err(b"+1S"),
            "strconv.ParseUint: parsing \"+1\": invalid syntax"
        );
        assert!(err(b"-1S").contains("invalid syntax"));
        assert!(err(b" 1S").contains("invalid syntax"));
    }

    #[test]
    fn the_last_header_counts_and_a_bad_one_fails() {
        let mut headers = HeaderMap::new();
        assert_eq!(requested_deadline(&headers), Ok(None));
        headers.append(GRPC_TIMEOUT, "1H".parse().unwrap());
        headers.append(GRPC_TIMEOUT, "1S".parse().unwrap());
        let deadline = requested_deadline(&headers).unwrap().unwrap();
        assert!(deadline <= Instant::now() + Duration::from_secs(1));
        headers.append(GRPC_TIMEOUT, "soon".parse().unwrap());
        assert!(requested_deadline(&headers).is_err());
    }
}
