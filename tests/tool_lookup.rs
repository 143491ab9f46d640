//! Where the suite finds the tools scripts/setup.sh installs: on a bare Debian 12, moto lives in
//! the virtualenv target/venv (PEP 668 refuses a system-wide `pip install`), which is not on PATH
//! when `cargo test` runs on its own. A tool found nowhere fails loudly with its install hint.

mod support;

use std::path::Path;

#[test]
fn tools_in_target_venv_are_found_and_missing_ones_fail_with_a_hint() {
    let bin_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let name = format!("regwatch-lookup-probe-{}", std::process::id());
    let probe = bin_dir.join(&name);
    std::fs::write(&probe, "#!/bin/sh\n").unwrap();
    // Only this test runs in this binary, so narrowing PATH races with nothing.
    // SAFETY: no other thread reads the environment meanwhile.
    unsafe { std::env::set_var("PATH", "/usr/bin:/bin") };

    let found = std::panic::catch_unwind(|| support::require(&name, "unused"));
    let missing_name = format!("{name}-absent");
    let missing = std::panic::catch_unwind(|| support::require(&missing_name, "apt-get install x"));
    std::fs::remove_file(&probe).unwrap();

    let venv_found = found.as_ref().is_ok_and(|p| *p == probe);
    let hint = missing
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    support::report(
        "tool installed only in target/venv found by the tests",
        venv_found,
        "true",
    );
    assert!(
        venv_found,
        "a tool in target/venv/bin must be found: {found:?}"
    );
    assert!(
        hint.contains(&missing_name) && hint.contains("apt-get install x"),
        "a missing tool fails loudly with its install hint: {hint:?}"
    );
}
