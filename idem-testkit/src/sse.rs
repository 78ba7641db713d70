//! A server-sent events body for tests of streamed answers: `count` events,
//! the first at once and each next one `gap` later, optionally breaking off
//! with an error after some of them.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};

/// The stream; `tag` is written into every event (an execution's number,
/// so that a replay can be told from a second execution).
pub struct Events {
    tag: String,
    sent: u32,
    count: u32,
    gap: Duration,
    breaks_after: Option<u32>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Events {
    /// `count` events, `gap` apart.
    pub fn new(tag: impl Into<String>, count: u32, gap: Duration) -> Self {
        Self {
            tag: tag.into(),
            sent: 0,
            count,
            gap,
            breaks_after: None,
            wait: None,
        }
    }

    /// Ends with an error once `n` events were sent, instead of the rest.
    pub fn breaking_after(mut self, n: u32) -> Self {
        self.breaks_after = Some(n);
        self
    }

    /// Event `i` (from 1) as it is sent.
    pub fn event(tag: &str, i: u32) -> String {
        format!("id: {i}\nevent: progress\ndata: {{\"run\": \"{tag}\", \"step\": {i}}}\n\n")
    }
}

impl Body for Events {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.sent >= self.count {
            return Poll::Ready(None);
        }
        if let Some(wait) = &mut self.wait {
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        if self.breaks_after == Some(self.sent) {
            self.count = self.sent;
            return Poll::Ready(Some(Err(std::io::Error::other(
                "the event stream broke off",
            ))));
        }
        self.sent += 1;
        if self.sent < self.count {
            self.wait = Some(Box::pin(tokio::time::sleep(self.gap)));
        }
        let event = Self::event(&self.tag, self.sent);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}
