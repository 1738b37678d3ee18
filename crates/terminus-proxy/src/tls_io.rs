//! The TLS stream hyper serves on: tokio-rustls' stream, plus one duty tokio-rustls leaves to
//! its caller. rustls answers some records by itself (a `no_renegotiation` warning to a TLS 1.2
//! ClientHello, a KeyUpdate to a TLS 1.3 KeyUpdate that asks for one), but tokio-rustls writes
//! what rustls queued only along with the next application data, and a connection waiting for
//! a request has none: the client would wait for an answer that never comes. So every read
//! ends by writing out whatever rustls queued.

use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub(crate) struct TlsIo(TlsStream<TcpStream>);

impl TlsIo {
    pub(crate) fn new(stream: TlsStream<TcpStream>) -> Self {
        Self(stream)
    }

    pub(crate) fn get_mut(&mut self) -> (&mut TcpStream, &mut ServerConnection) {
        self.0.get_mut()
    }

    /// Writes what rustls queued while reading, as far as the socket takes it now.
    fn answer(&mut self, cx: &mut Context<'_>) {
        let session = self.0.get_mut().1;
        // rustls holds a KeyUpdate reply back until the next application record; an empty
        // write releases it without adding a record. It fails only after a fatal error, which
        // the read itself reports.
        let _ = session.writer().write(&[]);
        if session.wants_write() {
            // Pending leaves this task woken when the socket drains, and its next read comes
            // back here; an error shows on the next read or write.
            let _ = Pin::new(&mut self.0).poll_flush(cx);
        }
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.0).poll_read(cx, buf);
        this.answer(cx);
        read
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
