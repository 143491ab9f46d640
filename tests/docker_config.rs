//! `docker_config`: credentials from a Docker `config.json` (or a Kubernetes
//! `kubernetes.io/dockerconfigjson` secret), against `docker-registry` with `auth: token`, whose
//! token realm (tests/support/token_server.rs) verifies the Basic password or the OAuth2 refresh
//! token it is sent.
//!
//! The file format is docker/cli's `configfile.ConfigFile`: `auths` (keyed by registry, with `auth`
//! = base64 "user:password", or `username`/`password`, or `identitytoken`), `credHelpers`
//! (registry → helper suffix) and `credsStore` (the default helper). Helpers speak the protocol of
//! github.com/docker/docker-credential-helpers: `docker-credential-<name> get`, the server URL on
//! stdin, `{"ServerURL","Username","Secret"}` on stdout; Username `<token>` marks an identity token.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use support::token_server::{Style, TokenServer};
use support::{Auth, Daemon, Registry, Setup, json_lines, metric, report, wait_ready};

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in {out}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A registry entry watching `team/app` through the docker config at `config`.
fn entry(name: &str, kind: &str, url: &str, config: &Path) -> String {
    format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"{kind}\"\nurl = \"{url}\"\ninsecure = true\nrepositories = [\"team/app\"]\ndocker_config = \"{}\"\n\n",
        config.display()
    )
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// Writes an executable `docker-credential-<name>` into `dir`.
fn helper(dir: &Path, name: &str, body: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A PATH that finds the helpers in `dir`, and the shell tools they use.
fn path_with(dir: &Path) -> String {
    format!("{}:/usr/bin:/bin", dir.display())
}

fn regwatch(setup: &Setup, args: &[&str], path: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regwatch"))
        .args(args)
        .arg("-c")
        .arg(&setup.config)
        .env("RUST_LOG", "regwatch=debug")
        .env("PATH", path)
        // Keep gcr's Application Default Credentials on loopback, should they ever be consulted.
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .env("CLOUDSDK_CONFIG", "/nonexistent")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A JWT-shaped identity token (unsigned: the realm checks it by registration, as an opaque
/// refresh token) whose `exp` the helper cache reads.
fn jwt_with_exp(exp: u64, n: usize) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp},"jti":"h{n}"}}"#));
    format!("{header}.{claims}.sig{n}")
}

/// Scan cycles of `registry` that did not complete (`failed` or `incomplete`).
async fn failed_scans(admin: &str, registry: &str) -> f64 {
    let mut n = 0.0;
    for result in ["failed", "incomplete"] {
        let name = format!("regwatch_scans_total{{registry=\"{registry}\",result=\"{result}\"}}");
        n += metric(admin, &name).await.unwrap_or(0.0);
    }
    n
}

async fn token_registry(users: &[(&str, &str)]) -> (TokenServer, Registry) {
    let tokens = TokenServer::start(users, Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("team/app", "v1").await;
    (tokens, registry)
}

#[tokio::test(flavor = "multi_thread")]
async fn auths_with_auth_password_and_identity_token() {
    let (tokens, registry) = token_registry(&[("ci", "ci-pw"), ("hubuser", "hub-pw")]).await;
    tokens.add_refresh_token("identity-token-1", "ci");
    let host = &registry.host;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Each key in one of the forms `docker login` and hand-written files use.
    let auth = write(
        &d.join("auth.json"),
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            STANDARD.encode("ci:ci-pw")
        ),
    );
    let userpass = write(
        &d.join("userpass.json"),
        &format!(
            r#"{{"auths":{{"http://{host}":{{"username":"ci","password":"ci-pw","email":"x@example.com"}}}}}}"#
        ),
    );
    let identity = write(
        &d.join("identity.json"),
        &format!(
            r#"{{"auths":{{"https://{host}/v1/":{{"auth":"","identitytoken":"identity-token-1"}}}}}}"#
        ),
    );
    // Docker Hub's entry (under the legacy index URL) is for Docker Hub's hosts only: a dockerhub
    // entry pointed at another host (a mirror, here the local registry) uses that host's entry,
    // as `docker login <host>` files it. The realm refuses the Hub password, so sending it fails.
    let hub = write(
        &d.join("hub.json"),
        &format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"{host}":{{"auth":"{}"}}}}}}"#,
            STANDARD.encode("hubuser:not-for-this-host"),
            STANDARD.encode("ci:ci-pw")
        ),
    );
    let url = registry.url();
    let setup = Setup::new(
        "",
        &[
            entry("auth", "oci", &url, &auth),
            entry("userpass", "harbor", &url, &userpass),
            entry("identity", "acr", &url, &identity),
            entry("hub", "dockerhub", &url, &hub),
            // gcr without a key or impersonation: the docker config, not ADC.
            entry("gcr", "gcr", &url, &auth).replace("\n\n", "\nproject_id = \"team\"\n\n"),
        ]
        .concat(),
    );
    let path = std::env::var("PATH").unwrap_or_default();
    let (code, out, err) = regwatch(&setup, &["check"], &path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        line(&out, "auth").ends_with(" ok (docker config: auths)"),
        "{out}"
    );
    assert!(
        line(&out, "userpass").ends_with(" ok (docker config: auths)"),
        "{out}"
    );
    assert!(
        line(&out, "identity").ends_with(" ok (docker config: identity token)"),
        "{out}"
    );
    assert!(
        line(&out, "hub").ends_with(" ok (docker config: auths)"),
        "{out}"
    );
    assert!(
        line(&out, "gcr").ends_with(" ok (docker config: auths)"),
        "{out}"
    );
    assert_eq!(tokens.refused(), 0, "every realm request was accepted");

    let (code, out, err) = regwatch(&setup, &["once"], &path);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let digest = registry.push("team/app", "v2").await;
    let (code, out, err) = regwatch(&setup, &["once"], &path);
    assert_eq!(code, 0, "{err}");
    let mut seen: Vec<String> = json_lines(&out)
        .iter()
        .filter(|e| e["data"]["tag"] == "v2" && e["data"]["digest"] == digest.as_str())
        .map(|e| {
            e["data"]["registry"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["auth", "gcr", "hub", "identity", "userpass"],
        "{out}"
    );
    report(
        "docker config auths forms accepted by the realm (5 kinds)",
        seen.len(),
        "5",
    );

    // A wrong identity token: the realm refuses it, and check says so as for any password.
    let wrong = write(
        &d.join("wrong.json"),
        &format!(r#"{{"auths":{{"{host}":{{"identitytoken":"not-registered"}}}}}}"#),
    );
    let bad = Setup::new("", &entry("bad", "oci", &url, &wrong));
    let (code, out, _) = bad.regwatch(&["check"]);
    assert_eq!(code, 1);
    assert!(
        line(&out, "bad").ends_with("invalid credentials (401/403)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_helpers_and_store_run_per_credential_lifetime_not_per_request() {
    let (tokens, registry) = token_registry(&[("helperuser", "helper-pw"), ("ci", "ci-pw")]).await;
    let host = registry.host.clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("helper.log");
    // Identity tokens that expire 10 s apart, all accepted by the realm; the helper hands out the
    // first one with more than 2 s to live, as a cloud helper hands out short-lived tokens.
    let start = now();
    let list: Vec<(u64, String)> = (1..=40)
        .map(|i| {
            (
                start + 10 * i as u64,
                jwt_with_exp(start + 10 * i as u64, i),
            )
        })
        .collect();
    for (_, t) in &list {
        tokens.add_refresh_token(t, "ci");
    }
    let token_file = d.join("tokens");
    std::fs::write(
        &token_file,
        list.iter()
            .map(|(exp, t)| format!("{exp} {t}\n"))
            .collect::<String>(),
    )
    .unwrap();
    helper(
        d,
        "shortlived",
        &format!(
            r#"input=$(cat)
echo "$(date +%s) shortlived $1 $input" >> {log}
[ "$1" = get ] || exit 1
now=$(date +%s)
while read exp tok; do
  if [ "$exp" -gt $((now + 2)) ]; then
    printf '{{"ServerURL":"%s","Username":"<token>","Secret":"%s"}}\n' "$input" "$tok"
    exit 0
  fi
done < {tokens}
exit 1
"#,
            log = log.display(),
            tokens = token_file.display()
        ),
    );
    helper(
        d,
        "store",
        &format!(
            r#"input=$(cat)
echo "$(date +%s) store $1 $input" >> {log}
printf '{{"ServerURL":"%s","Username":"helperuser","Secret":"helper-pw"}}\n' "$input"
"#,
            log = log.display()
        ),
    );
    // credHelpers beats credsStore (which names a helper that does not exist), and credsStore
    // beats an auths entry with a wrong password: docker/cli's precedence.
    let helpers = write(
        &d.join("helpers.json"),
        &format!(r#"{{"credsStore":"absent","credHelpers":{{"{host}":"shortlived"}}}}"#),
    );
    let store = write(
        &d.join("store.json"),
        &format!(
            r#"{{"credsStore":"store","auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            STANDARD.encode("ci:wrong")
        ),
    );
    let url = registry.url();
    let path = path_with(d);
    let setup = Setup::new(
        "",
        &[
            entry("helper", "oci", &url, &helpers),
            entry("store", "oci", &url, &store),
        ]
        .concat(),
    );
    let (code, out, err) = regwatch(&setup, &["check"], &path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        line(&out, "helper").ends_with(" ok (docker config: credHelper shortlived)"),
        "{out}"
    );
    assert!(
        line(&out, "store").ends_with(" ok (docker config: credsStore store)"),
        "{out}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let mut names: Vec<&str> = calls
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["shortlived", "store"], "one run each: {calls}");
    for l in calls.lines() {
        let fields: Vec<&str> = l.split(' ').collect();
        assert_eq!(
            &fields[2..],
            ["get", host.as_str()],
            "`get`, and the registry host on stdin: {calls}"
        );
    }
    assert_eq!(tokens.refused(), 0);

    // 30 s of watching with registry tokens that live 5 s and helper tokens that live 10 s.
    tokens.set_token_lifetime(5);
    std::fs::remove_file(&log).unwrap();
    // Three repositories and the catalog: four token scopes per cycle.
    registry.push("team/api", "v1").await;
    registry.push("team/web", "v1").await;
    let watch = Setup::new(
        "interval = \"2s\"\njitter = \"0%\"\n",
        &entry("helper", "oci", &url, &helpers).replace("[\"team/app\"]", "[\"team/*\"]"),
    );
    let daemon = Daemon::start(
        Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["run", "-c"])
            .arg(&watch.config)
            .env("RUST_LOG", "regwatch=debug")
            .env("PATH", &path),
    );
    wait_ready(&watch.admin).await;
    let ok = "regwatch_scans_total{registry=\"helper\",result=\"ok\"}";
    let err4xx = "regwatch_registry_requests_total{registry=\"helper\",status=\"4xx\"}";
    // The first request of a process meets the registry's challenge (a 401 by design); every 401
    // after that would be a request sent with an expired or missing token.
    let challenges = metric(&watch.admin, err4xx).await.unwrap_or(0.0);
    let scans_before = metric(&watch.admin, ok).await.unwrap_or(0.0);
    let issued_before = tokens.issued();
    let began = Instant::now();
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;
    let scans = metric(&watch.admin, ok).await.unwrap_or(0.0) - scans_before;
    let after_4xx = metric(&watch.admin, err4xx).await.unwrap_or(0.0);
    let failed = failed_scans(&watch.admin, "helper").await;
    let elapsed = began.elapsed().as_secs_f64();
    let (_, _, stderr) = daemon.stop();
    let runs = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    let issued = tokens.issued() - issued_before;
    // The helper hands out tokens with 2 to 12 s left, and the cache renews one with r <= 10 s
    // left at r/2 (never more than half a lifetime early): at most two runs per 10 s lifetime.
    let bound = 2 * (elapsed / 10.0).ceil() as usize + 1;
    report(
        "docker config helper: 401s in a 30 s watch with 5 s registry tokens",
        after_4xx - challenges,
        "0",
    );
    report(
        "docker config helper: realm refusals in the watch",
        tokens.refused(),
        "0",
    );
    report(
        "docker config helper: scans completed ok in 30 s at interval 2 s",
        scans,
        ">= 12, none failed",
    );
    report(
        "docker config helper: helper runs in 30 s (10 s secrets) vs registry tokens issued",
        format!("{runs} vs {issued}"),
        &format!("3..={bound} runs, not one per request"),
    );
    assert_eq!(after_4xx, challenges, "no request answered 4xx: {stderr}");
    assert_eq!(tokens.refused(), 0, "{stderr}");
    assert_eq!(failed, 0.0, "every cycle completed: {stderr}");
    assert!(scans >= 12.0, "cycles completed: {scans}");
    assert!(
        (3..=bound).contains(&runs),
        "the helper ran at most twice per secret lifetime: {runs} runs, {issued} tokens"
    );
    assert!(issued >= 4 * runs, "{issued} tokens, {runs} runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_helper_answer_is_asked_for_again() {
    let (tokens, registry) = token_registry(&[]).await;
    tokens.add_refresh_token("helper-old", "ci");
    tokens.set_token_lifetime(5);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("helper.log");
    let current = d.join("current");
    std::fs::write(&current, "helper-old").unwrap();
    // An opaque secret (no exp): cached for the default 5 minutes unless the realm refuses it.
    helper(
        d,
        "rotating",
        &format!(
            r#"input=$(cat)
echo "$1 $input" >> {log}
printf '{{"ServerURL":"%s","Username":"<token>","Secret":"%s"}}\n' "$input" "$(cat {current})"
"#,
            log = log.display(),
            current = current.display()
        ),
    );
    let config = write(
        &d.join("config.json"),
        &format!(r#"{{"credHelpers":{{"{}":"rotating"}}}}"#, registry.host),
    );
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &entry("h", "oci", &registry.url(), &config),
    );
    let daemon = Daemon::start(
        Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["run", "-c"])
            .arg(&setup.config)
            .env("RUST_LOG", "regwatch=debug")
            .env("PATH", path_with(d)),
    );
    wait_ready(&setup.admin).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(runs(), 1, "cached across cycles");
    // The identity behind the helper rotates its token and revokes the old one.
    tokens.add_refresh_token("helper-new", "ci");
    std::fs::write(&current, "helper-new").unwrap();
    tokens.remove_refresh_token("helper-old");
    // The registry token minted before the revocation still serves for up to half its 5 s, so
    // v2 may be seen before any refusal. Then the realm refuses the old answer; it is kept until
    // it is older than the refusal grace (30 s: one refused moments after the helper gave it is
    // refused for who it names), then asked for again, with the refusals meanwhile backing the
    // registry off to at most 8 intervals. v3, pushed once the helper ran again, proves the new
    // answer is in use.
    let v2 = registry.push("team/app", "v2").await;
    let seen = |digest: &str| {
        daemon
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(digest))
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) && !(seen(&v2) && runs() >= 2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let asked_again = started.elapsed();
    let v3 = registry.push("team/app", "v3").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && !seen(&v3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v3_seen = seen(&v3);
    let (_, _, stderr) = daemon.stop();
    let refused = tokens.refused();
    report(
        "docker config helper: runs around a revocation / realm refusals / re-asked after",
        format!(
            "{} runs / {refused} refusals / {:.0} s",
            runs(),
            asked_again.as_secs_f64()
        ),
        "2 runs / a few (one per backed-off cycle until the 30 s grace) / ~ 30 s + 2 backoffs",
    );
    assert!(
        v3_seen,
        "the new token was fetched after the refusal: {stderr}"
    );
    assert_eq!(runs(), 2, "asked again once, after the refusal");
    assert!((1..=10).contains(&refused), "{refused} refusals: {stderr}");
}

/// Kubelet's atomic writer: the mounted file is `<dir>/config.json -> ..data/config.json`, and
/// `..data` a symlink to a timestamped directory, swapped by renaming a new symlink over it.
fn kubelet_write(dir: &Path, generation: u32, text: &str) {
    let version = dir.join(format!("..2026_11_27_{generation}"));
    std::fs::create_dir(&version).unwrap();
    std::fs::write(version.join("config.json"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("config.json");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/config.json", &link).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_is_used_at_the_next_cycle() {
    let (tokens, registry) = token_registry(&[]).await;
    tokens.add_refresh_token("rotation-old", "ci");
    tokens.set_token_lifetime(5);
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path();
    let host = &registry.host;
    let config = |token: &str| format!(r#"{{"auths":{{"{host}":{{"identitytoken":"{token}"}}}}}}"#);
    kubelet_write(mount, 1, &config("rotation-old"));
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &entry("k8s", "oci", &registry.url(), &mount.join("config.json")),
    );
    let daemon = setup.spawn();
    wait_ready(&setup.admin).await;
    let ok = "regwatch_scans_total{registry=\"k8s\",result=\"ok\"}";

    // A rotation that breaks the file: no scan succeeds with the old credential meanwhile.
    let errors = failed_scans(&setup.admin, "k8s").await;
    kubelet_write(mount, 2, "{\"auths\": {");
    // A token request already on the wire when the file was swapped may still complete.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let issued = tokens.issued();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let broken_errors = failed_scans(&setup.admin, "k8s").await - errors;
    let broken_issued = tokens.issued() - issued;

    // The fixed secret carries a new token; the old one is revoked once the daemon has had a
    // cycle to see the file.
    tokens.add_refresh_token("rotation-new", "ci");
    kubelet_write(mount, 3, &config("rotation-new"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokens.remove_refresh_token("rotation-old");
    // Registry tokens minted before the revocation expire within 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let scans = metric(&setup.admin, ok).await.unwrap_or(0.0);
    let digest = registry.push("team/app", "v2").await;
    let started = Instant::now();
    let mut event = None;
    while started.elapsed() < Duration::from_secs(15) && event.is_none() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        event = daemon
            .stdout
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(&digest))
            .cloned();
    }
    let scans_after = metric(&setup.admin, ok).await.unwrap_or(0.0) - scans;
    let (_, _, stderr) = daemon.stop();
    report(
        "docker config rotation: tokens minted while the rotated file was broken",
        broken_issued,
        "0",
    );
    report(
        "docker config rotation: the tag pushed after rotation seen",
        event.is_some(),
        "true",
    );
    assert_eq!(
        broken_issued, 0,
        "the old credential was not used: {stderr}"
    );
    assert!(broken_errors >= 1.0, "scans failed while broken: {stderr}");
    assert!(
        stderr.contains("no credentials: docker config"),
        "the reason is logged: {stderr}"
    );
    assert!(event.is_some(), "the new credential worked: {stderr}");
    assert!(scans_after >= 1.0);
    assert_eq!(
        tokens.refused(),
        0,
        "the revoked token was never sent: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_and_hanging_helpers_say_why_without_their_output() {
    let (_tokens, registry) = token_registry(&[("ci", "ci-pw")]).await;
    let host = &registry.host;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `sleep` runs as the helper's child, not in its place (no `exec`): killing only the helper
    // would leave it running. The marker in its environment finds it afterwards.
    let marker = format!("REGWATCH_HANG_MARKER={:x}", rand::random::<u64>());
    helper(
        d,
        "hang",
        &format!(
            "echo $$ >> {}/hang.log\nexport {marker}\nsleep 600\n",
            d.display()
        ),
    );
    helper(
        d,
        "fail",
        "echo 'helper-stdout-canary-71f'\necho 'helper-stderr-canary-5a0' >&2\nexit 3\n",
    );
    helper(
        d,
        "garbage",
        "cat >/dev/null\necho 'helper-garbage-canary-c33 {'\n",
    );
    helper(
        d,
        "notfound",
        "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1\n",
    );
    let conf = |helper: &str| {
        write(
            &d.join(format!("{helper}.json")),
            &format!(r#"{{"credHelpers":{{"{host}":"{helper}"}}}}"#),
        )
    };
    let url = registry.url();
    let setup = Setup::new(
        "",
        &[
            entry("hang", "oci", &url, &conf("hang")),
            entry("fail", "oci", &url, &conf("fail")),
            entry("garbage", "oci", &url, &conf("garbage")),
            entry("notfound", "oci", &url, &conf("notfound")),
            entry("missing", "oci", &url, &conf("not-installed")),
        ]
        .concat(),
    );
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_regwatch"))
        .args(["check", "-c"])
        .arg(&setup.config)
        .env("RUST_LOG", "trace")
        .env("PATH", path_with(d))
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        line(&stdout, "hang")
            .ends_with("no credentials: docker config: docker-credential-hang timed out after 10s"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "fail").ends_with(
            "no credentials: docker config: docker-credential-fail exited with status 3"
        ),
        "{stdout}"
    );
    assert!(
        line(&stdout, "garbage").ends_with(
            "no credentials: docker config: docker-credential-garbage printed no credentials JSON"
        ),
        "{stdout}"
    );
    assert!(
        line(&stdout, "notfound").ends_with(&format!(
            "no credentials: docker config: docker-credential-notfound has no credentials for {host}"
        )),
        "{stdout}"
    );
    assert!(
        line(&stdout, "missing")
            .contains("no credentials: docker config: cannot run docker-credential-not-installed"),
        "{stdout}"
    );
    for canary in [
        "helper-stdout-canary-71f",
        "helper-stderr-canary-5a0",
        "helper-garbage-canary-c33",
    ] {
        assert!(!all.contains(canary), "helper output leaked: {canary}");
    }
    report(
        "docker config: check with a hanging helper (10 s timeout) took",
        format!("{:.1} s", took.as_secs_f64()),
        "< 15 s",
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    // The helper's whole process group was killed: its `sleep 600` did not outlive `check`.
    let mut survivors = processes_with(&marker);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !survivors.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        survivors = processes_with(&marker);
    }
    // Their pgrp tells whether they were in the helper's own group.
    let described: Vec<String> = survivors
        .iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
        .collect();
    for pid in &survivors {
        // Clean up after a failing run: these are this test's own `sleep 600`s.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    report(
        "docker config: processes left by a timed-out helper (`sleep 600` without exec)",
        survivors.len(),
        "0",
    );
    assert!(
        survivors.is_empty(),
        "the timed-out helper left processes behind (/proc/PID/stat: pid, comm, state, ppid, \
         pgrp): {described:?}; helper pids: {:?}",
        std::fs::read_to_string(d.join("hang.log"))
    );
}

/// Live processes whose environment holds `marker` (`NAME=value`).
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // A zombie's environment reads empty: only running processes match.
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

#[test]
fn broken_or_misplaced_docker_config_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |body: &str| {
        let setup = Setup::new("", body);
        setup.regwatch(&["check"])
    };
    let good = write(
        &d.join("good.json"),
        r#"{"auths":{"registry.example.com":{"auth":"dTpw"}}}"#,
    );
    let (code, _, err) = run(&format!(
        "[[registry]]\nname = \"e\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com\"\ndocker_config = \"{}\"\n",
        good.display()
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("registry[0].docker_config")
            && err.contains("line 9")
            && err.contains("AWS API"),
        "{err}"
    );
    let broken = write(
        &d.join("broken.json"),
        "{\n  \"auths\": {\n    \"registry.example.com\": {\"auth\": \"secret-canary-b4d\"\n",
    );
    let block = |path: &Path| {
        format!(
            "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"https://registry.example.com\"\ndocker_config = \"{}\"\n",
            path.display()
        )
    };
    let (code, _, err) = run(&block(&broken));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("registry[0].docker_config") && err.contains("line 9"),
        "{err}"
    );
    assert!(
        err.contains("broken.json") && err.contains("line 4"),
        "{err}"
    );
    assert!(!err.contains("secret-canary-b4d"), "{err}");
    let (code, _, err) = run(&block(&d.join("absent.json")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("absent.json"), "{err}");
    let other = write(
        &d.join("other.json"),
        r#"{"auths":{"other.example.com":{"auth":"dTpw"}}}"#,
    );
    let (code, _, err) = run(&block(&other));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no entry for registry.example.com"), "{err}");
    let not_base64 = write(
        &d.join("nb64.json"),
        r#"{"auths":{"registry.example.com":{"auth":"secret-canary-%%"}}}"#,
    );
    let (code, _, err) = run(&block(&not_base64));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("base64") && !err.contains("secret-canary"),
        "{err}"
    );
}

/// Docker files Docker Hub's credentials under `https://index.docker.io/v1/` and hands them only
/// to the Hub (docker/cli resolves the key from the image reference's host: `docker.io` and its
/// aliases). A `dockerhub` entry whose `url` is another host, a pull-through mirror say, must not
/// receive them: the mirror's operator would get the user's Docker ID password.
#[test]
fn hub_credentials_are_not_sent_to_a_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let hub_only = write(
        &dir.path().join("hub.json"),
        &format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            STANDARD.encode("hubuser:hub-canary-pw")
        ),
    );
    let body = |url: &str| {
        format!(
            "[[registry]]\nname = \"m\"\nkind = \"dockerhub\"\nurl = \"{url}\"\nrepositories = [\"nginx\"]\ndocker_config = \"{}\"\n",
            hub_only.display()
        )
    };
    // Config load only: nothing is sent anywhere.
    let setup = Setup::new("", &body("https://mirror.example"));
    let err = match regwatch::config::load(&setup.config) {
        Ok(_) => String::new(),
        Err(e) => format!("{}: {}", e.path, e.message),
    };
    report(
        "docker config: Hub credentials offered to a dockerhub entry at a mirror host",
        if err.is_empty() {
            "accepted"
        } else {
            "refused at load"
        },
        "refused at load",
    );
    assert!(
        err.starts_with("registry[0].docker_config") && err.contains("no entry for mirror.example"),
        "the Hub entry was taken for mirror.example: {err:?}"
    );
    assert!(!err.contains("hub-canary-pw"), "{err}");
    // The Hub itself still finds them (validation only; nothing is sent).
    for url in ["https://registry.hub.docker.com", "https://docker.io"] {
        let setup = Setup::new("", &body(url));
        let config = regwatch::config::load(&setup.config);
        assert!(config.is_ok(), "{url}: {:?}", config.err());
    }
}

/// The same at run time, where it matters: a `dockerhub` entry at a mirror whose docker config
/// holds both the Hub's credentials and the mirror's own. Every request the mirror receives
/// (its token endpoint included) carries the mirror's credentials or its token, never the Hub's.
#[tokio::test(flavor = "multi_thread")]
async fn hub_credentials_are_not_sent_to_a_mirror_at_run_time() {
    use std::sync::Arc;
    use support::synthetic::{Synthetic, serve};
    let state = Arc::new(Synthetic::default());
    state.put("library/nginx", "v1", 1);
    *state.token_auth.lock().unwrap() = Some((
        "mirroruser".into(),
        "mirror-pw".into(),
        "mirror-token".into(),
    ));
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (hub, mirror) = (
        STANDARD.encode("hubuser:hub-canary-pw"),
        STANDARD.encode("mirroruser:mirror-pw"),
    );
    let config = write(
        &dir.path().join("config.json"),
        &format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{hub}"}},"{host}":{{"auth":"{mirror}"}}}}}}"#
        ),
    );
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"m\"\nkind = \"dockerhub\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"nginx\"]\ndocker_config = \"{}\"\n",
            config.display()
        ),
    );
    let (code, _, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let seen: Vec<String> = state
        .authorization_seen
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .cloned()
        .collect();
    report(
        "docker config: requests to a dockerhub mirror carrying the Hub's credentials",
        seen.iter().filter(|a| a.contains(&hub)).count(),
        "0",
    );
    assert!(
        seen.iter().any(|a| a == &format!("Basic {mirror}")),
        "the mirror's own credentials reach its token endpoint: {seen:?}"
    );
    assert!(
        seen.iter().any(|a| a == "Bearer mirror-token"),
        "the scan ran with the mirror's token: {seen:?}"
    );
    assert!(!seen.iter().any(|a| a.contains(&hub)), "{seen:?}");
    assert!(!err.contains("hub-canary-pw"), "{err}");
}

/// Many repositories ask for a token at once (each has its own scope), so they all ask the source
/// at once. A helper that hangs until its 10 s timeout must cost one run, not one per repository
/// queued behind it: else a cycle over N repositories takes N × 10 s, and a failing helper is
/// started N times per cycle.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_helper_runs_once_for_repositories_asking_together() {
    let (_tokens, registry) = token_registry(&[("ci", "ci-pw")]).await;
    for repo in ["team/b", "team/c", "team/d"] {
        registry.push(repo, "v1").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("helper.log");
    helper(
        d,
        "hang",
        &format!(
            "cat >/dev/null\necho \"$1\" >> {}\nexec sleep 60\n",
            log.display()
        ),
    );
    let config = write(
        &d.join("config.json"),
        &format!(r#"{{"credHelpers":{{"{}":"hang"}}}}"#, registry.host),
    );
    let setup = Setup::new(
        "",
        &entry("many", "oci", &registry.url(), &config).replace(
            "[\"team/app\"]",
            "[\"team/app\", \"team/b\", \"team/c\", \"team/d\"]",
        ),
    );
    let started = Instant::now();
    let (code, out, err) = regwatch(&setup, &["once"], &path_with(d));
    let took = started.elapsed();
    let runs = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    report(
        "docker config: hanging helper, 4 repositories at once: helper runs, once took",
        format!("{runs} runs, {:.1} s", took.as_secs_f64()),
        "1 run, < 20 s",
    );
    assert_ne!(code, 0, "no credentials, no complete scan: {out}{err}");
    assert!(
        err.contains("docker-credential-hang timed out after 10s"),
        "{err}"
    );
    assert_eq!(runs, 1, "one run shared by the repositories: {err}");
    assert!(took < Duration::from_secs(20), "{took:?}: {err}");
}

/// A helper's answer is a few hundred bytes; one that floods stdout must be cut off at the cap
/// (and killed) rather than read to the end into memory. Measured: the peak RSS of `regwatch
/// check` while the helper prints 256 MiB and then holds stdout open.
#[test]
fn a_helper_flooding_stdout_is_cut_off_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    helper(
        d,
        "flood",
        "cat >/dev/null\nhead -c 268435456 /dev/zero\nexec sleep 60\n",
    );
    // The source is asked once the registry challenges, so a token registry is needed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_tokens, registry) = rt.block_on(token_registry(&[("ci", "ci-pw")]));
    let config = write(
        &d.join("config.json"),
        &format!(r#"{{"credHelpers":{{"{}":"flood"}}}}"#, registry.host),
    );
    let setup = Setup::new("", &entry("flood", "oci", &registry.url(), &config));
    let started = Instant::now();
    // Reaped below by wait4, which also reports its peak memory.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(env!("CARGO_BIN_EXE_regwatch"))
        .args(["check", "-c"])
        .arg(&setup.config)
        .env("RUST_LOG", "regwatch=debug")
        .env("PATH", path_with(d))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    // Reap it ourselves to read its peak resident set (ru_maxrss, KiB on Linux).
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let took = started.elapsed();
    let peak_mib = usage.ru_maxrss as f64 / 1024.0;
    report(
        "docker config: peak RSS of check while a helper prints 256 MiB",
        format!("{peak_mib:.0} MiB in {:.1} s", took.as_secs_f64()),
        "< 100 MiB, < 5 s",
    );
    assert!(
        line(&stdout, "flood").ends_with(
            "no credentials: docker config: docker-credential-flood printed more than a credential"
        ),
        "{stdout}"
    );
    assert!(peak_mib < 100.0, "{peak_mib:.0} MiB");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Lifetimes come from outside: a helper's JWT `exp` and the token realm's `expires_in`. Absurd
/// ones (`exp` = u64::MAX - 1, `expires_in` = 10^19 s) must not panic the process when
/// added to the clock (`Instant + Duration` panics on overflow); the credential is used, and
/// reused no longer than a bounded time.
#[tokio::test(flavor = "multi_thread")]
async fn absurd_lifetimes_from_helper_or_realm_do_not_panic() {
    let (tokens, registry) = token_registry(&[]).await;
    let far = jwt_with_exp(u64::MAX - 1, 1);
    tokens.add_refresh_token(&far, "ci");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    helper(
        d,
        "far",
        &format!(
            "cat >/dev/null\nprintf '{{\"Username\":\"<token>\",\"Secret\":\"%s\"}}' '{far}'\n"
        ),
    );
    let config = write(
        &d.join("config.json"),
        &format!(r#"{{"credHelpers":{{"{}":"far"}}}}"#, registry.host),
    );
    let setup = Setup::new("", &entry("far", "oci", &registry.url(), &config));
    let (code, out, err) = regwatch(&setup, &["check"], &path_with(d));
    report(
        "docker config: check with a helper JWT whose exp is u64::MAX - 1",
        format!("exit {code}"),
        "exit 0",
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        line(&out, "far").ends_with(" ok (docker config: credHelper far)"),
        "{out}"
    );

    // The realm answers expires_in = 10^19 s (it fits a u64; the JWT's own exp is then past what
    // the registry's JWT library reads, so the registry may refuse the token: either outcome is a
    // verdict, a panic is not).
    tokens.set_token_lifetime(10_000_000_000_000_000_000);
    let (code, out, err) = regwatch(&setup, &["check"], &path_with(d));
    report(
        "docker config: check with a realm expires_in of 1e19 s",
        format!("exit {code}"),
        "exit 0 or 1, no panic",
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(code == 0 || code == 1, "{out}{err}");
    let verdict = line(&out, "far");
    assert!(
        verdict.ends_with(" ok (docker config: credHelper far)")
            || verdict.ends_with(" invalid credentials (401/403)"),
        "{out}"
    );
}

/// docker/cli's `ConvertToHostname` keeps the port a key spells out, a scheme's default one too
/// (Go's url.Parse keeps it: `http://reg.example:80` is `reg.example:80`). A key for port 80 of a
/// host names another registry than the https one on 443, and its password must not go there.
#[test]
fn a_key_for_another_port_of_the_host_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir.path().join("port80.json"),
        &format!(
            r#"{{"auths":{{"http://reg.example:80":{{"auth":"{}"}}}}}}"#,
            STANDARD.encode("u:port80-canary-pw")
        ),
    );
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"https://reg.example\"\nrepositories = [\"a\"]\ndocker_config = \"{}\"\n",
            file.display()
        ),
    );
    // Config load only: nothing is sent anywhere.
    let err = match regwatch::config::load(&setup.config) {
        Ok(_) => String::new(),
        Err(e) => format!("{}: {}", e.path, e.message),
    };
    report(
        "docker config: key http://reg.example:80 offered to https://reg.example",
        if err.is_empty() { "used" } else { "not used" },
        "not used",
    );
    assert!(
        err.contains("no entry for reg.example"),
        "the port-80 entry was taken for port 443: {err:?}"
    );
    assert!(!err.contains("port80-canary-pw"), "{err}");
}

/// A helper whose answer the realm refuses (a revoked robot account, say): a refusal drops the
/// cached answer so the next request asks the helper again, which is right once; but repositories
/// scanned one after the other must not run the helper once each (with ecr-login or gcloud
/// behind it, that is a cloud API call per repository per cycle). An answer refused within the
/// refusal grace (30 s) of the helper giving it is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_helper_is_not_rerun_for_every_repository() {
    let (tokens, registry) = token_registry(&[]).await;
    let repos = ["team/app", "team/b", "team/c", "team/d", "team/e", "team/f"];
    for repo in &repos[1..] {
        registry.push(repo, "v1").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("helper.log");
    helper(
        d,
        "revoked",
        &format!(
            "cat >/dev/null\necho \"$1\" >> {}\nprintf '{{\"Username\":\"<token>\",\"Secret\":\"revoked-token\"}}'\n",
            log.display()
        ),
    );
    let config = write(
        &d.join("config.json"),
        &format!(r#"{{"credHelpers":{{"{}":"revoked"}}}}"#, registry.host),
    );
    let list = repos.map(|r| format!("\"{r}\"")).join(", ");
    let setup = Setup::new(
        "",
        &entry("revoked", "oci", &registry.url(), &config)
            .replace("[\"team/app\"]", &format!("[{list}]\nconcurrency = 1")),
    );
    let (code, out, err) = regwatch(&setup, &["once"], &path_with(d));
    let runs = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    report(
        "docker config: helper runs for 6 repositories (one at a time) whose answer is refused",
        format!("{runs} runs, {} refusals", tokens.refused()),
        "<= 2 runs",
    );
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(tokens.refused(), 6, "every repository was refused: {err}");
    assert!(runs <= 2, "{runs} helper runs: {err}");
}

/// `docker_config` is read at load and before each use. A path that is not a regular file (a FIFO
/// nobody writes, `/dev/zero`) must be refused, not read: a FIFO blocks the read, and with it
/// the thread, forever; `/dev/zero` never ends and fills memory.
#[test]
fn a_docker_config_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for path in [fifo.as_path(), Path::new("/dev/zero")] {
        let setup = Setup::new(
            "",
            &format!(
                "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"https://reg.example\"\nrepositories = [\"a\"]\ndocker_config = \"{}\"\n",
                path.display()
            ),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(["check", "-c"])
            .arg(&setup.config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        report(
            &format!(
                "docker config: check with docker_config = {}",
                path.display()
            ),
            match status {
                Some(s) => format!("exit {:?}", s.code()),
                None => "still running after 10 s".into(),
            },
            "exit 2",
        );
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{path:?}: {err}");
        assert!(
            err.contains("registry[0].docker_config") && err.contains("not a regular file"),
            "{err}"
        );
    }
}
