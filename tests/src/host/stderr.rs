//! Guest stderr captured for tests: every write the guest makes is kept as it
//! came, so a test sees whether a log line left in one write or in pieces.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The writes of every instance of an app's components to stderr, in order.
#[derive(Clone, Default)]
pub struct CapturedStderr {
    writes: Arc<Mutex<Vec<Bytes>>>,
    /// Back-pressured, as a full pipe nobody reads: no room, never ready.
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl CapturedStderr {
    /// Each write call's bytes, as the host received them.
    pub fn writes(&self) -> Vec<Bytes> {
        self.writes.lock().unwrap().clone()
    }

    /// Everything written, split into lines (for reading; [`Self::writes`] to check the writes).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.writes().concat()).into_owned()
    }

    /// Makes stderr take nothing (`true`) until it is let go (`false`), as a
    /// host's stderr does when the pipe it writes to is full.
    pub fn stall(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_stalled(&self) -> bool {
        self.stalled.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn push(&self, bytes: &[u8]) {
        self.writes
            .lock()
            .unwrap()
            .push(Bytes::copy_from_slice(bytes));
    }
}

impl IsTerminal for CapturedStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for CapturedStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.is_stalled() {
            return Ok(0);
        }
        // As the host's own stderr stream: any write of the guest goes in one call.
        Ok(1024 * 1024)
    }
}

// What `#[async_trait]` would generate: ready, unless stalled (then once let go).
impl Pollable for CapturedStderr {
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
    {
        let this = self.clone();
        Box::pin(async move {
            while this.is_stalled() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    }
}

impl AsyncWrite for CapturedStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
