//! The HTTP pieces of the Docker API: the response body (a whole buffer with its length, or
//! a stream fed by a task), errors in Docker's `{"message": …}` shape, JSON answers, and
//! reading a request body within a bound.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Largest request body accepted (a container create with a long environment is a few
/// KiB; the replicated command it becomes is bounded at 64 KiB anyway).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Chunks a stream may queue before its producer waits for the client to read.
pub const STREAM_QUEUE: usize = 16;

/// A response body: either all of it at once (sent with a `Content-Length`), or a stream
/// of chunks from a [`StreamSender`] (sent chunked, each chunk flushed as it comes).
#[derive(Debug)]
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body {
    pub fn empty() -> Self {
        Body::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }

    /// A streamed body and the sender that feeds it; dropping the sender ends the body.
    pub fn stream() -> (StreamSender, Self) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        (StreamSender(tx), Body::Stream(rx))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// Feeds a [`Body::stream`]. Sending fails once the client has gone (the connection
/// dropped the body), which is how a stream learns to stop.
#[derive(Debug)]
pub struct StreamSender(mpsc::Sender<Bytes>);

impl StreamSender {
    /// Sends one chunk; `false` if the client is gone.
    pub async fn send(&self, chunk: impl Into<Bytes>) -> bool {
        self.0.send(chunk.into()).await.is_ok()
    }

    /// Resolves when the client is gone.
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// An error answer: a status and a message for the user, sent as `{"message": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 400: a bad parameter or body.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: a name in use, or a state that forbids the request.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 500: the cluster could not do it.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503: this node cannot answer yet (not in the cluster, no leader).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "message": self.message });
        json_response(self.status, &body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

/// A JSON answer with its length.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    // Serialising a `Value` cannot fail (its map keys are strings).
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Body::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// 200 with a JSON body.
pub fn ok_json(value: &serde_json::Value) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

/// A status without a body (204, 304).
pub fn status_only(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

/// Reads the whole request body, refusing more than [`MAX_BODY_BYTES`].
pub async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match http_body_util::Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!("cannot read the request body: {e}"))),
    }
}

/// Parses a JSON request body into `T`; an empty body is refused.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty; send the JSON the endpoint takes"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON in the request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_body_has_its_length_and_a_stream_ends_with_its_sender() {
        let body = Body::full("abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(body.collect().await.expect("body").to_bytes(), Bytes::from("abc"));
        assert_eq!(Body::empty().size_hint().exact(), Some(0));

        let (tx, body) = Body::stream();
        assert_eq!(body.size_hint().exact(), None);
        let reader = tokio::spawn(async move { body.collect().await.expect("body").to_bytes() });
        assert!(tx.send("a").await && tx.send("b").await);
        drop(tx);
        assert_eq!(reader.await.expect("join"), Bytes::from("ab"));
    }

    #[tokio::test]
    async fn a_sender_learns_that_the_client_went_away() {
        let (tx, body) = Body::stream();
        drop(body);
        tx.closed().await;
        assert!(!tx.send("x").await);
    }

    #[tokio::test]
    async fn errors_are_json_messages_with_a_length() {
        let resp = ApiError::conflict("name in use").into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let exact = resp.body().size_hint().exact();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(exact, Some(bytes.len() as u64));
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["message"], "name in use");
    }

    #[tokio::test]
    async fn bodies_are_bounded_and_json_is_checked() {
        let big = http_body_util::Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]));
        assert_eq!(read_body(big).await.expect_err("too big").status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = http_body_util::Full::new(Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(read_body(ok).await.expect("ok"), Bytes::from_static(b"{\"a\":1}"));
        let e = parse_json::<serde_json::Value>(b"{\"a\":").expect_err("malformed");
        assert!(e.status == StatusCode::BAD_REQUEST && e.message.contains("malformed JSON"), "{e}");
        assert!(parse_json::<serde_json::Value>(b"  ").expect_err("empty").message.contains("empty"));
    }
}
