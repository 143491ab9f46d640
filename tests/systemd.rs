//! systemd integration without systemd: the unit passes `systemd-analyze verify` and scores an
//! exposure of 2.0 or lower; the daemon speaks the notify protocol (READY, WATCHDOG, RELOADING,
//! STOPPING) on `NOTIFY_SOCKET`; SIGHUP reloads, and an invalid new config keeps the old one.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Auth, Registry, Setup, require};

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

    // An invalid one is refused; the daemon keeps running and keeps feeding the watchdog.
    std::fs::write(&setup.config, "[daemon]\nbogus = 1\n").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
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
