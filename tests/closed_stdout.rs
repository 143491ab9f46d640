//! Listing commands whose reader goes away early (`regwatch repos … | head`): like any Unix tool,
//! they end quietly with exit 0, with no panic and no message, whatever was left unprinted.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::synthetic::{Synthetic, serve};

/// Linux's default pipe buffer; every listing below must be several times larger, so the command
/// is still writing when the reader closes its end.
const PIPE_BUFFER: usize = 64 * 1024;

/// Runs `regwatch ARGS -c CONFIG` with stdout piped, reads one line (at most 4 KiB, as `head -1` or
/// `head -c 4096` would), closes the pipe, and waits: (exit code, stderr).
fn run_and_close_early(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_regwatch"))
        .args(args)
        .arg("-c")
        .arg(config)
        // A panic would print its backtrace too; the assertion below must see either.
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while first.len() < 4096 && stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    assert!(!first.is_empty(), "{args:?} printed nothing");
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit within 120 s after its reader closed stdout");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), stderr_reader.join().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_commands_end_quietly_when_the_reader_closes_stdout() {
    let state = Arc::new(Synthetic::default());
    // `repos` prints ~15 bytes a line; `tags` ~80; `once --dry-run` ~1 KiB an event.
    let (repos, tags) = (20_000, 4_000);
    for r in 0..repos {
        state.put(&format!("fleet/app{r:05}"), "v1", 0);
    }
    for t in 0..tags {
        state.put("team/big", &format!("v{t:05}"), 0);
    }
    assert!(repos * 15 > 4 * PIPE_BUFFER && tags * 80 > 4 * PIPE_BUFFER);
    let host = serve(state).await;
    let registry = |name: &str, repositories: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrate_limit = 100000\nconcurrency = 16\nrepositories = [{repositories}]\n\n"
        )
    };
    // `first_run = "emit"`, so the dry run prints an event for every tag rather than a silent baseline.
    let fleet = support::Setup::new("first_run = \"emit\"", &registry("fleet", "\"**\""));
    let big = support::Setup::new("first_run = \"emit\"", &registry("big", "\"team/big\""));

    let cases: Vec<(std::path::PathBuf, &[&str])> = vec![
        (fleet.config.clone(), &["repos", "fleet"][..]),
        (fleet.config.clone(), &["repos", "fleet", "--json"][..]),
        (big.config.clone(), &["tags", "big", "team/big"][..]),
        (
            big.config.clone(),
            &["tags", "big", "team/big", "--json"][..],
        ),
        (big.config.clone(), &["once", "--dry-run"][..]),
    ];
    // The children block on their pipes; keep that off the runtime serving the registry.
    let unclean = tokio::task::spawn_blocking(move || {
        let mut unclean = Vec::new();
        for (config, args) in cases {
            let (code, stderr) = run_and_close_early(&config, args);
            // No panic, and no error message either (those start with `regwatch: `).
            let noisy = ["panicked", "Broken pipe", "broken pipe", "stack backtrace"]
                .iter()
                .any(|n| stderr.contains(n))
                || stderr.lines().any(|l| l.starts_with("regwatch: "));
            if code != Some(0) || noisy {
                unclean.push(format!(
                    "`{}`: exit {code:?}, stderr:\n{stderr}",
                    args.join(" ")
                ));
            }
        }
        unclean
    })
    .await
    .unwrap();
    support::report(
        "listing commands that panic or fail when stdout closes early (repos, tags, once --dry-run)",
        unclean.len(),
        "0",
    );
    assert!(
        unclean.is_empty(),
        "a closed stdout must end the command quietly with exit 0:\n{}",
        unclean.join("\n")
    );
}
