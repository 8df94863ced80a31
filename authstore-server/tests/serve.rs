//! `serve_with` over real loopback sockets: peer addresses, slow headers, connection limit,
//! graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use authstore_server::{ServeOptions, serve_with};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;

async fn start(
    options: ServeOptions,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let app = Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move { p.ip().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve_with(
            listener,
            app,
            async {
                let _ = rx.await;
            },
            options,
        )
        .await
        .unwrap();
    });
    (addr, tx, task)
}

fn get_blocking(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_address_and_slow_headers() {
    let mut options = ServeOptions::default();
    options.header_read_timeout = Duration::from_millis(300);
    let (addr, stop, task) = start(options).await;
    let body = tokio::task::spawn_blocking(move || get_blocking(addr, "/peer"))
        .await
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("127.0.0.1"), "{body}");

    // Half a header, then silence: the server closes the connection.
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        (
            start.elapsed(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(closed.0 < Duration::from_secs(5), "held for {:?}", closed.0);
    assert!(!closed.1.contains("200"), "{}", closed.1);
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let (addr, stop, task) = start(ServeOptions::default()).await;
    let inflight = tokio::task::spawn_blocking(move || get_blocking(addr, "/slow"));
    // Let the request reach the handler, then ask the server to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(());
    let body = inflight.await.unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("done"),
        "{body}"
    );
    task.await.unwrap();
    // Stopped: nothing accepts any more.
    assert!(TcpStream::connect(addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit() {
    let mut options = ServeOptions::default();
    options.max_connections = 1;
    let (addr, stop, task) = start(options).await;
    // One idle connection holds the only slot...
    let idle = TcpStream::connect(addr).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let body = get_blocking(addr, "/peer");
        (start.elapsed(), body)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served past the limit"
    );
    // ... until it goes.
    drop(idle);
    let (_, body) = waiting.await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let _ = stop.send(());
    task.await.unwrap();
}
