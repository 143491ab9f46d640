//! The README's quickstart as a new user follows it: start Debian's `docker-registry` with the
//! quickstart's own config, and `regwatch check -c config/quickstart.toml` says `ok`. Only the port
//! and the storage move to scratch places, so the test never collides with a registry already
//! running there.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of the first line `KEY: value` (YAML) or `KEY = "value"` (TOML).
fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix(key)?;
            let v = rest.trim_start().strip_prefix([':', '='])?;
            Some(v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("no `{key}` in\n{text}"))
}

#[test]
fn quickstart_registry_config_lets_check_say_ok() {
    let readme = read("README.md");
    for command in [
        "docker-registry serve config/quickstart-registry.yml",
        "cargo run --release -- run -c config/quickstart.toml",
    ] {
        assert!(readme.contains(command), "the README must show `{command}`");
    }
    let registry_yml = read("config/quickstart-registry.yml");
    let quickstart = read("config/quickstart.toml");
    let addr = value_of(&registry_yml, "addr");
    assert_eq!(
        value_of(&quickstart, "url"),
        format!("http://{addr}"),
        "config/quickstart.toml must watch the registry config/quickstart-registry.yml starts"
    );

    let scratch = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let storage = value_of(&registry_yml, "rootdirectory");
    let yml = scratch.path().join("registry.yml");
    std::fs::write(
        &yml,
        registry_yml
            .replace(&addr, &format!("127.0.0.1:{port}"))
            .replace(&storage, &scratch.path().join("data").display().to_string()),
    )
    .unwrap();
    let toml = scratch.path().join("quickstart.toml");
    std::fs::write(
        &toml,
        quickstart
            .replace(&addr, &format!("127.0.0.1:{port}"))
            .replace(
                &value_of(&quickstart, "state_dir"),
                &scratch.path().join("state").display().to_string(),
            ),
    )
    .unwrap();

    let mut registry = Command::new(support::require(
        "docker-registry",
        "apt-get install docker-registry",
    ))
    .arg("serve")
    .arg(&yml)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = registry.try_wait().unwrap() {
            panic!("docker-registry serve {} exited: {status}", yml.display());
        }
        assert!(Instant::now() < deadline, "docker-registry did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = Command::new(env!("CARGO_BIN_EXE_regwatch"))
        .args(["check", "-c"])
        .arg(&toml)
        .output()
        .unwrap();
    let _ = registry.kill();
    let _ = registry.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcome = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    support::report(
        "quickstart as written: `regwatch check` against its own registry config",
        &outcome,
        "local ok",
    );
    assert_eq!(
        (out.status.code(), outcome.as_str()),
        (Some(0), "local ok"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
