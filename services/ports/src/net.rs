//! The `Net` port: listen for and open byte streams. Real and embedded modes use tokio's TCP;
//! a simulation uses turmoil's, where host names resolve through the simulated DNS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// Listening and connecting. Addresses are `host:port` strings.
pub trait Net: Clone + Send + Sync + 'static {
    /// What `bind` returns; axum serves on it.
    type Listener: axum::serve::Listener<Io = Self::Stream, Addr = SocketAddr>;
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Binds a listener (port 0 picks a free one).
    fn bind(&self, addr: &str) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// Connects to `host:port`.
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// tokio TCP (real and embedded modes).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

impl Net for TokioNet {
    type Listener = tokio::net::TcpListener;
    type Stream = tokio::net::TcpStream;

    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        // Small request/response messages: don't wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

#[cfg(feature = "turmoil")]
pub use sim::{TurmoilListener, TurmoilNet};

#[cfg(feature = "turmoil")]
mod sim {
    use super::*;

    /// turmoil's simulated TCP. Only usable inside a turmoil host.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TurmoilNet;

    /// A turmoil listener that axum can serve on.
    pub struct TurmoilListener(turmoil::net::TcpListener);

    impl axum::serve::Listener for TurmoilListener {
        type Io = turmoil::net::TcpStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                match self.0.accept().await {
                    Ok(conn) => return conn,
                    // As axum does for tokio: an accept error concerns one connection; keep serving.
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                }
            }
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            self.0.local_addr()
        }
    }

    impl Net for TurmoilNet {
        type Listener = TurmoilListener;
        type Stream = turmoil::net::TcpStream;

        async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
            turmoil::net::TcpListener::bind(addr)
                .await
                .map(TurmoilListener)
        }

        async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
            turmoil::net::TcpStream::connect(addr).await
        }
    }
}
