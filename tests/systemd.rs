//! systemd integration without systemd: the unit passes `systemd-analyze verify` and scores an
//! exposure of 2.0 or lower, and gives the daemon's shutdown timeout room; the daemon speaks the
//! notify protocol (READY, WATCHDOG, RELOADING, STOPPING) on `NOTIFY_SOCKET`; SIGHUP reloads, an
//! invalid new config keeps the old one, and the watchdog is fed while a reload waits on a scan.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::synthetic::{self, Synthetic};
use support::{Auth, Registry, Setup, report, require};

const UNIT: &str = include_str!("../systemd/regwatch.service");

#[test]
fn unit_verifies_and_is_hardened() {
    let analyze = require("systemd-analyze", "apt-get install systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("regwatch.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/regwatch", env!("CARGO_BIN_EXE_regwatch")),
    )
    .unwrap();

    let verify = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    assert!(
        !text.contains("regwatch.service:"),
        "verify warnings about the unit:\n{text}"
    );

    let security = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for regwatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security exposure: {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
}

/// Discards every notification queued so far, so what is read next was sent after this call.
fn drain(socket: &UnixDatagram) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while socket.recv(&mut buf).is_ok() {}
    socket.set_nonblocking(false).unwrap();
}

/// Every notification that arrives within `window`, with when it arrived.
fn collect(socket: &UnixDatagram, window: Duration) -> Vec<(Instant, String)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < window {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).trim().to_owned(),
            ));
        }
    }
    seen
}

fn messages(socket: &UnixDatagram, until: &str, within: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            let done = msg.contains(until);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {until} within {within:?}; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_protocol_watchdog_and_reload() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1").await;
    let setup = Setup::new(
        "interval = \"1s\"\n",
        &format!(
            "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"{}\"\ninsecure = true\n",
            registry.url()
        ),
    );
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let daemon = support::Daemon::start(
        Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["run", "-c"])
            .arg(&setup.config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "1500000")
            .env("RUST_LOG", "regwatch=info"),
    );
    let pid = daemon.child.id().to_string();

    messages(&socket, "READY=1", Duration::from_secs(10));
    messages(&socket, "WATCHDOG=1", Duration::from_secs(5));

    // A valid new config: RELOADING, then READY again.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace("interval = \"1s\"", "interval = \"2s\""),
    )
    .unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let seen = messages(&socket, "READY=1", Duration::from_secs(10));
    assert!(seen.iter().any(|m| m.contains("RELOADING=1")), "{seen:?}");

    // An invalid one is refused; the daemon keeps running and keeps feeding the watchdog. Only a
    // keep-alive sent after the signal counts, not one queued before it.
    std::fs::write(&setup.config, "[daemon]\nbogus = 1\n").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    drain(&socket);
    std::thread::sleep(Duration::from_millis(500));
    messages(&socket, "WATCHDOG=1", Duration::from_secs(5));

    let (code, _, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("configuration reloaded"), "{err}");
    assert!(err.contains("reload refused"), "{err}");
    assert!(
        err.contains("daemon.bogus"),
        "the refusal names the key: {err}"
    );
}

/// The unit's stop timeout leaves the daemon's own shutdown bound (`daemon.shutdown_timeout`,
/// 20 s by default) room to finish before systemd resorts to SIGKILL.
#[test]
fn stop_timeout_leaves_room_for_the_shutdown_timeout() {
    let stop: u64 = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec is set")
        .trim()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    report(
        "systemd TimeoutStopSec vs default daemon.shutdown_timeout",
        format!("{stop} s vs 20 s"),
        ">= 1.5 x",
    );
    assert!(stop >= 30, "TimeoutStopSec={stop} leaves too little room");
}

/// A reload that replaces a registry's loop waits for that loop's scan in progress to end; the
/// watchdog must be fed all along, or `WatchdogSec=` kills the daemon in the middle of a reload.
#[tokio::test(flavor = "multi_thread")]
async fn watchdog_is_fed_while_a_reload_waits_on_a_long_scan() {
    const WATCHDOG: Duration = Duration::from_secs(3);
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 1);
    let host = synthetic::serve(state.clone()).await;
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &format!(
            "[[registry]]\nname = \"local\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\n"
        ),
    );
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let daemon = support::Daemon::start(
        Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["run", "-c"])
            .arg(&setup.config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env("RUST_LOG", "regwatch=info"),
    );
    messages(&socket, "READY=1", Duration::from_secs(10));
    messages(&socket, "WATCHDOG=1", Duration::from_secs(5));

    // The registry turns slow: a listing is now in flight for 8 s.
    *state.tags_delay.lock().unwrap() = Some(Duration::from_secs(8));
    let before = state.tags_requests.load(Ordering::Relaxed);
    let started = Instant::now();
    while state.tags_requests.load(Ordering::Relaxed) == before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no scan started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Its configuration changes, so the reload replaces its loop, which is mid-scan.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace(
            "repositories = [",
            "mutable_tags = [\"latest\"]\nrepositories = [",
        ),
    )
    .unwrap();
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    drain(&socket);
    let seen = collect(&socket, Duration::from_secs(9));
    let ended = Instant::now();
    *state.tags_delay.lock().unwrap() = None;

    let mut last = signalled;
    let mut longest = Duration::ZERO;
    for (at, _) in seen.iter().filter(|(_, m)| m.contains("WATCHDOG=1")) {
        longest = longest.max(at.duration_since(last));
        last = *at;
    }
    longest = longest.max(ended.duration_since(last));
    let (code, _, err) = daemon.stop();
    report(
        "SIGHUP while a scan runs 8 s: longest gap between watchdog keep-alives (WatchdogSec 3 s)",
        format!("{:.1} s", longest.as_secs_f64()),
        "< 3 s",
    );
    assert_eq!(code, 0, "{err}");
    let texts: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    assert!(err.contains("configuration reloaded"), "{err}");
    assert!(
        longest < WATCHDOG,
        "the watchdog went {longest:?} without a keep-alive during the reload: {texts:?}\n{err}"
    );
}
