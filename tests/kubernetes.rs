//! `deploy/kubernetes`: every kustomize variant and overlay renders, validates against the
//! Kubernetes schemas offline, runs under the restricted Pod Security Standard, and agrees with
//! the config its ConfigMap holds, which regwatch's own loader accepts. The checks themselves are
//! in `deploy/kubernetes/check.py` (Python, for the schemas of `kubernetes-validate`).

mod support;

use std::path::Path;
use std::process::Command;

use support::{report, require};

#[test]
fn every_kubernetes_variant_renders_validates_and_runs_restricted() {
    let kubectl = require(
        "kubectl",
        "https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ (or the pkgs.k8s.io apt repository)",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/venv/bin/python3");
    assert!(
        root.join("target/venv/bin/kubernetes-validate").is_file(),
        "kubernetes-validate is required by this test but is not in target/venv; install it with: \
         python3 -m venv target/venv && target/venv/bin/pip install 'kubernetes-validate==1.*' \
         (scripts/setup.sh installs every tool the suite needs)"
    );
    let out = Command::new(&python)
        .arg(root.join("deploy/kubernetes/check.py"))
        .arg("--kubectl")
        .arg(&kubectl)
        .arg("--regwatch")
        .arg(env!("CARGO_BIN_EXE_regwatch"))
        .output()
        .expect("run deploy/kubernetes/check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rendered = stdout.lines().filter(|l| !l.starts_with("PROBLEM")).count();
    let problems = stdout.lines().filter(|l| l.starts_with("PROBLEM")).count();
    report(
        "deploy/kubernetes: variants rendered and checked, problems found",
        format!("{rendered}, {problems}"),
        "6, 0",
    );
    assert!(
        out.status.success() && rendered >= 6,
        "deploy/kubernetes/check.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
