//! The admin endpoint: the webhook token is checked before the body is read (an empty one never
//! matches, and a registry without a webhook answers as a wrong token does), bodies are capped at
//! 64 KiB, and clients that stall cannot starve the others. Driven over raw TCP so that a client
//! can promise a body it never sends, or never finish its request head.

mod support;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regwatch::admin::{Hook, Readiness, router, serve};
use support::{Daemon, Setup, free_port, report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

const TOKEN: &str = "hook-secret";

/// Serves the admin router as the daemon does, with one webhook, `local`, whose token is `token`;
/// returns its address and the hint queue.
async fn admin_with(token: &str) -> (String, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel(16);
    let hooks = HashMap::from([(
        "local".to_owned(),
        Hook {
            token: token.to_owned().into(),
            hints: tx,
        },
    )]);
    let app = router(Arc::new(Readiness::new(Vec::new(), false)), hooks);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        // Never asked to stop: the sender lives as long as the server.
        let (_stop, shutdown) = watch::channel(false);
        serve(listener, app, shutdown).await;
    });
    (addr, rx)
}

async fn admin() -> (String, mpsc::Receiver<String>) {
    admin_with(TOKEN).await
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
    head_to("/hooks/local", auth, length)
}

/// A webhook request head for `target` (path and query).
fn head_to(target: &str, auth: Option<&str>, length: Option<usize>) -> String {
    let mut h = format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n");
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

const PUSH: &[u8] =
    br#"{"events":[{"action":"push","target":{"repository":"team/app","tag":"v1"}}]}"#;

/// Docker Hub cannot set headers, so the token may come as `?token=`; an empty token, in either
/// place, is no token.
#[tokio::test(flavor = "multi_thread")]
async fn token_in_the_query_and_empty_tokens() {
    let (addr, mut hints) = admin().await;
    let post = |target: String, auth: Option<&'static str>| {
        let addr = addr.clone();
        async move {
            status_of(&addr, &head_to(&target, auth, Some(PUSH.len())), PUSH)
                .await
                .0
        }
    };
    assert_eq!(
        post(format!("/hooks/local?token={TOKEN}"), None).await,
        Some(202),
        "?token=<right>"
    );
    assert_eq!(hints.try_recv().unwrap(), "team/app");
    assert_eq!(
        post("/hooks/local?token=".into(), None).await,
        Some(401),
        "?token="
    );
    assert_eq!(
        post("/hooks/local?token=wrong".into(), None).await,
        Some(401),
        "?token=<wrong>"
    );
    assert_eq!(
        post("/hooks/local".into(), Some("")).await,
        Some(401),
        "Bearer <empty>"
    );
    assert!(
        hints.try_recv().is_err(),
        "no hint queued by a refused call"
    );
}

/// The endpoint refuses an empty presented token even when the configured one is empty too
/// (config loading refuses that; this is the second line of defence).
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_configured_token_opens_nothing() {
    let (addr, mut hints) = admin_with("").await;
    for (target, auth) in [
        ("/hooks/local?token=", None),
        ("/hooks/local", Some("")),
        ("/hooks/local", None),
    ] {
        let (code, _) = status_of(&addr, &head_to(target, auth, Some(PUSH.len())), PUSH).await;
        assert_eq!(code, Some(401), "{target} with bearer {auth:?}");
    }
    assert!(hints.try_recv().is_err(), "no hint queued");
    report(
        "webhook with an empty configured token: ?token= / empty bearer / none",
        "401 / 401 / 401",
        "401 each",
    );
}

/// A registry without a webhook answers as a wrong token does, so that no caller learns which
/// registries have webhooks.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_without_a_webhook_answers_401_like_a_wrong_token() {
    let (addr, _hints) = admin().await;
    for (target, auth) in [
        ("/hooks/unknown", None),
        ("/hooks/unknown", Some("wrong")),
        ("/hooks/unknown?token=wrong", None),
        // Another registry's right token opens nothing here either.
        ("/hooks/unknown", Some(TOKEN)),
    ] {
        let (code, _) = status_of(&addr, &head_to(target, auth, Some(PUSH.len())), PUSH).await;
        assert_eq!(code, Some(401), "{target} with bearer {auth:?}");
    }
    let (known, _) = status_of(&addr, &head(Some("wrong"), Some(PUSH.len())), PUSH).await;
    assert_eq!(known, Some(401));
}

/// A daemon config for one registry nobody answers at (its scans fail; the admin endpoint serves).
fn quiet_registry(extra: &str) -> String {
    format!(
        "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://127.0.0.1:{}\"\ninsecure = true\nrepositories = [\"team/app\"]\ninterval = \"300s\"\n{extra}",
        free_port()
    )
}

/// Waits until the daemon's `/healthz` answers 200, failing after 30 s.
async fn wait_healthy(admin: &str, daemon: &Daemon) {
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://{admin}/healthz")).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no /healthz within 30 s: {}",
            daemon.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The issue's case: `webhook_token_file` holding only a newline loaded fine, and
/// `POST /hooks/<name>?token=` got 202. Now the daemon does not start: exit 2, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_token_file_holding_only_a_newline_stops_the_daemon_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook");
    std::fs::write(&file, "\n").unwrap();
    let setup = Setup::new(
        "",
        &quiet_registry(&format!("webhook_token_file = \"{}\"\n", file.display())),
    );
    let mut daemon = setup.spawn();
    let started = Instant::now();
    while daemon.child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if daemon.child.try_wait().unwrap().is_none() {
        // Still running: show what the empty token let through, then fail.
        let status = reqwest::Client::new()
            .post(format!("http://{}/hooks/r?token=", setup.admin))
            .body(PUSH)
            .send()
            .await
            .map(|r| r.status().as_u16().to_string())
            .unwrap_or_else(|e| e.to_string());
        report(
            "daemon with a newline-only webhook_token_file: outcome",
            format!("runs; POST /hooks/r?token= answered {status}"),
            "exit 2 at load",
        );
        panic!("the daemon started with an empty webhook token; ?token= got {status}");
    }
    let (code, _, err) = daemon.stop();
    report(
        "daemon with a newline-only webhook_token_file: outcome",
        format!("exit {code}"),
        "exit 2 at load",
    );
    assert_eq!(code, 2, "{err}");
    let line = std::fs::read_to_string(&setup.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("webhook_token_file"))
        .unwrap()
        + 1;
    assert!(
        err.contains("registry[0].webhook_token_file") && err.contains(&format!("(line {line})")),
        "{err}"
    );
}

/// Sets this process's soft RLIMIT_NOFILE to at least `want` (within the hard limit), so that the
/// test's own sockets fit.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

/// `regwatch run` with the soft RLIMIT_NOFILE of a systemd service that sets none (systemd's
/// default, 1024), however high this test process's limit is.
fn spawn_as_a_service(setup: &Setup) -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regwatch"));
    command
        .args(["run", "-c"])
        .arg(&setup.config)
        .env("RUST_LOG", "regwatch=info");
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max.min(1024);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Daemon::start(&mut command)
}

/// `GET /healthz` on a fresh connection: its status code and how long it took, `None` when no
/// answer came within `within`.
async fn healthz(addr: &str, within: Duration) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        std::str::from_utf8(buf.get(9..12.min(n))?)
            .ok()?
            .parse()
            .ok()
    };
    let code = tokio::time::timeout(within, attempt).await.ok().flatten();
    (code, started.elapsed())
}

/// 2,000 clients connect and stall (half of them say nothing, half send half a request head) to a
/// daemon run with systemd's default soft limit of 1024 descriptors. `/healthz` must still answer
/// within 2 s (on a machine busy with the rest of the suite), every time: the stalled ones hold
/// neither all the descriptors nor all the slots. Without the cap, none of 5 answered.
#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_while_2000_stalled_connections_are_open() {
    const STALLED: usize = 2000;
    raise_nofile(STALLED as u64 + 1024);
    let setup = Setup::new("", &quiet_registry(""));
    let daemon = spawn_as_a_service(&setup);
    wait_healthy(&setup.admin, &daemon).await;

    // Connect them all at once; a daemon out of descriptors stops accepting, and then the
    // listen backlog fills, so each connect gets a deadline.
    let mut connects = tokio::task::JoinSet::new();
    for i in 0..STALLED {
        let addr = setup.admin.clone();
        connects.spawn(async move {
            let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            if i % 2 == 1 {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHo").await;
            }
            Some(s)
        });
    }
    let mut stalled = Vec::with_capacity(STALLED);
    while let Some(s) = connects.join_next().await {
        stalled.extend(s.unwrap());
    }
    let connected = stalled.len();

    // The accept loop works through the listen backlog the storm left (closing the stalled
    // connections past its cap); on a machine busy with other tests that takes a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (code, took) = healthz(&setup.admin, Duration::from_secs(2)).await;
        worst = worst.max(took);
        answers.push(code);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report(
        "admin: /healthz with 2,000 stalled connections (daemon at 1024 fds): answers, worst time",
        format!(
            "{}/5 answered 200, worst {} ms ({connected} stalled connections made)",
            answers.iter().filter(|c| **c == Some(200)).count(),
            worst.as_millis()
        ),
        "5/5, < 2000 ms",
    );
    let stderr = daemon.stderr.lock().unwrap().clone();
    assert!(
        answers.iter().all(|c| *c == Some(200)),
        "/healthz answers {answers:?} with {connected} stalled connections open\n{}",
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    drop(stalled);
    let (code, _, _) = daemon.stop();
    assert_eq!(code, 0, "the daemon shuts down cleanly afterwards");
}

/// A client that never finishes its request head (or never starts one) is disconnected after the
/// header-read timeout (10 s), instead of holding its connection forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_head_is_cut_off_after_the_header_read_timeout() {
    let setup = Setup::new("", &quiet_registry(""));
    let daemon = setup.spawn();
    wait_healthy(&setup.admin, &daemon).await;
    let stall = |first: &'static [u8]| {
        let addr = setup.admin.clone();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(first).await.unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 256];
            // EOF or a reset both end it; 20 s without either means it was never cut off.
            let ended = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            ended.ok().map(|()| started.elapsed())
        })
    };
    let silent = stall(b"");
    let half = stall(b"GET /healthz HTTP/1.1\r\nHo");
    let (silent, half) = (silent.await.unwrap(), half.await.unwrap());
    report(
        "admin: stalled request head (nothing / half a head) cut off after",
        format!("{silent:?} / {half:?}"),
        "about 10 s each",
    );
    for (what, took) in [("silent", silent), ("half a head", half)] {
        let took = took.unwrap_or_else(|| panic!("{what}: still open after 20 s"));
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(13),
            "{what}: {took:?}"
        );
    }
}
