//! Response bodies (a whole document or a stream) and the responses the handlers build.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::Status;

/// A response body: a whole JSON document or a watch stream.
#[derive(Debug)]
pub struct ResponseBody(Inner);

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

/// A whole body.
pub(crate) fn full_body(b: impl Into<Bytes>) -> ResponseBody {
    ResponseBody::full(b)
}

/// A streamed body fed by `rx` (watches, proxied logs).
pub(crate) fn stream_body(rx: mpsc::Receiver<Bytes>) -> ResponseBody {
    ResponseBody(Inner::Stream(rx))
}

impl ResponseBody {
    fn full(b: impl Into<Bytes>) -> ResponseBody {
        ResponseBody(Inner::Full(Some(b.into())))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.0, Inner::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            Inner::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => http_body::SizeHint::with_exact(0),
            Inner::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

/// `v` as the body, with `code` and `content_type`.
pub(crate) fn json_response(code: u16, v: &Value, content_type: &str) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(ResponseBody::full(body))
        .unwrap_or_else(|_| Response::new(ResponseBody::full("")))
}

/// A JSON document already serialized.
pub(super) fn raw_json(body: Vec<u8>) -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(ResponseBody::full(body))
        .unwrap_or_else(|_| Response::new(ResponseBody::full("")))
}

/// A refusal as the `Status` object clients read.
pub(crate) fn status_response(s: &Status) -> Response<ResponseBody> {
    json_response(s.code, &s.to_json(), "application/json")
}

/// A plain-text body (health checks).
pub(super) fn text(body: &'static str) -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(ResponseBody::full(body))
        .unwrap_or_else(|_| Response::new(ResponseBody::full("")))
}
/// Adds `Warning: 299 - "..."` headers, which kubectl prints as `Warning: ...`.
pub(super) fn with_warnings(
    mut resp: Response<ResponseBody>,
    warnings: &[String],
) -> Response<ResponseBody> {
    for w in warnings {
        let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}
