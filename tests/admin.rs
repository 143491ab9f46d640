//! The admin endpoint's webhook: the token is checked before the body is read, and bodies are
//! capped at 64 KiB. Driven over raw TCP so that a client can promise a body it never sends.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regwatch::admin::{Hook, Readiness, router};
use support::report;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const TOKEN: &str = "hook-secret";

/// Serves the admin router with one webhook, `local`; returns its address and the hint queue.
async fn admin() -> (String, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel(16);
    let hooks = HashMap::from([(
        "local".to_owned(),
        Hook {
            token: TOKEN.to_owned().into(),
            hints: tx,
        },
    )]);
    let app = router(Arc::new(Readiness::new(Vec::new(), false)), hooks);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

/// Sends `head` and `body` and leaves the connection open; returns the status line's code and
/// how long it took, or `None` if no answer came within 3 s.
async fn status_of(addr: &str, head: &str, body: &[u8]) -> (Option<u16>, Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The peer may answer and close before reading everything it was promised.
    let _ = stream.write_all(body).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
    let code = match read {
        Ok(Ok(n)) if n >= 12 => std::str::from_utf8(&buf[9..12])
            .ok()
            .and_then(|c| c.parse().ok()),
        _ => None,
    };
    (code, started.elapsed())
}

fn head(auth: Option<&str>, length: Option<usize>) -> String {
    let mut h =
        "POST /hooks/local HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".to_owned();
    if let Some(t) = auth {
        h.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    match length {
        Some(n) => h.push_str(&format!("Content-Length: {n}\r\n")),
        None => h.push_str("Transfer-Encoding: chunked\r\n"),
    }
    h.push_str("\r\n");
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_token_is_checked_before_the_body_and_bodies_are_capped() {
    let (addr, mut hints) = admin().await;

    // No token, a body that is promised but never sent: 10 MB, and 32 KiB (under any default cap).
    for promised in [10_000_000, 32 * 1024] {
        let (code, took) = status_of(&addr, &head(None, Some(promised)), b"{\"ev").await;
        report(
            &format!("webhook without token, {promised}-byte body never sent: status / time"),
            format!(
                "{} / {} ms",
                code.map_or("no answer".into(), |c| c.to_string()),
                took.as_millis()
            ),
            "401 / < 1000 ms",
        );
        assert_eq!(code, Some(401), "promised {promised} bytes");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    // The wrong token is refused the same way.
    let (code, _) = status_of(&addr, &head(Some("wrong"), Some(32 * 1024)), b"{").await;
    assert_eq!(code, Some(401));

    // With the token: over 64 KiB is 413, whether declared or streamed in chunks.
    let (code, took) = status_of(&addr, &head(Some(TOKEN), Some(65 * 1024)), b"{").await;
    assert_eq!(code, Some(413), "declared length over the cap");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
    let chunked: String = std::iter::repeat_n(chunk.as_str(), 9).collect();
    let (code, _) = status_of(&addr, &head(Some(TOKEN), None), chunked.as_bytes()).await;
    assert_eq!(code, Some(413), "chunked body over the cap");
    report("webhook body over 64 KiB, with the token", "413", "413");

    // A real push notification under the cap still queues its scan.
    let body = br#"{"events":[{"action":"push","target":{"repository":"team/app","tag":"v1"}}]}"#;
    let (code, _) = status_of(&addr, &head(Some(TOKEN), Some(body.len())), body).await;
    assert_eq!(code, Some(202));
    assert_eq!(hints.try_recv().unwrap(), "team/app");
}
