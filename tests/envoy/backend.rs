//! The upstreams behind Envoy: an HTTP server answering 200 to anything (and counting what
//! reached it), and a gRPC server running the standard health service.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Router, extract::Request};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;

/// A running upstream; dropping it stops the server.
pub struct Backend {
    /// Where Envoy's `backend` cluster must point.
    pub addr: SocketAddr,
    /// Requests that reached the server.
    hits: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl Backend {
    /// An HTTP/1.1 and h2c server answering every request `200` with the body
    /// `tenant-header=<x-tenant-id as received, or none>`.
    pub async fn http() -> Backend {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new().fallback(move |request: Request| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let tenant_header = request
                    .headers()
                    .get("x-tenant-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                format!("tenant-header={tenant_header}")
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend { addr, hits, server }
    }

    /// A gRPC server (h2c) with `grpc.health.v1.Health`, reporting SERVING.
    pub async fn grpc_health() -> Backend {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let (_reporter, service) = tonic_health::server::health_reporter();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Backend {
            addr,
            hits: Arc::new(AtomicUsize::new(0)),
            server,
        }
    }

    /// How many requests reached the HTTP server so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|err| panic!("cannot bind a backend port: {err}"))
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|err| panic!("cannot read the backend address: {err}"))
}
