//! One loopback port that speaks TLS and plain HTTP, each with its own app: a registry reached with
//! `insecure = true` that redirects from https:// to http:// on the same host and port, the one
//! downgrade on which reqwest keeps the `Authorization` header.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// Connections handed over by the acceptor, as an axum listener.
struct Handed<S> {
    rx: mpsc::UnboundedReceiver<S>,
    addr: SocketAddr,
}

impl<S> axum::serve::Listener for Handed<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = S;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (S, SocketAddr) {
        match self.rx.recv().await {
            Some(s) => (s, self.addr),
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Serves `tls_app` over TLS (a self-signed certificate) and `plain_app` over plain HTTP, on the
/// same free loopback port; returns `127.0.0.1:PORT`.
pub async fn serve_dual(tls_app: Router, plain_app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tls_tx, tls_rx) = mpsc::unbounded_channel();
    let (plain_tx, plain_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, tls_tx, plain_tx) = (acceptor.clone(), tls_tx.clone(), plain_tx.clone());
            tokio::spawn(async move {
                // A TLS connection opens with a handshake record, content type 22.
                let mut first = [0u8; 1];
                if stream.peek(&mut first).await.is_err() {
                    return;
                }
                if first[0] == 0x16 {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = tls_tx.send(tls);
                    }
                } else {
                    let _ = plain_tx.send(stream);
                }
            });
        }
    });
    let tls = Handed { rx: tls_rx, addr };
    let plain = Handed { rx: plain_rx, addr };
    tokio::spawn(async move { axum::serve(tls, tls_app).await.unwrap() });
    tokio::spawn(async move { axum::serve(plain, plain_app).await.unwrap() });
    addr.to_string()
}
