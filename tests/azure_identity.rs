//! Azure ACR through Entra ID, against stand-ins that verify what they receive (see
//! `support/azure.rs`): the Entra token endpoint checks the client secret or the federated
//! assertion's signature, audience, issuer, subject and expiry; the managed-identity endpoints check
//! their SSRF headers; ACR's `/oauth2/exchange` checks the Entra token's signature, audience and
//! expiry and the form fields; `docker-registry` with token auth enforces the final token.
//!
//! Every regwatch run here gets a hermetic Azure environment: the variables the platform would
//! inject are removed, and IMDS (`AZURE_POD_IDENTITY_AUTHORITY_HOST`) points at a loopback address,
//! so no test ever sends a request to the real link-local metadata address.

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::azure::{AcrFront, Entra};
use support::{Daemon, Setup, free_port, json_lines, report};

const SECRET: &str = "entra-client-secret-4f1e";

/// Variables the Azure platforms inject; removed from every run, then set per test.
const AZURE_ENV: &[&str] = &[
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
];

/// `regwatch ARGS -c CONFIG` with exactly the Azure environment `env` (plus a loopback IMDS).
fn command(setup: &Setup, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_regwatch"));
    c.args(args).arg("-c").arg(&setup.config);
    c.env("RUST_LOG", "regwatch=debug");
    for k in AZURE_ENV {
        c.env_remove(k);
    }
    // Nothing listens there: IMDS is "unreachable" unless a test says otherwise.
    c.env(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://127.0.0.1:{}", free_port()),
    );
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(setup: &Setup, args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let out = command(setup, args, env).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in {out}"))
}

fn block(name: &str, front: &AcrFront, keys: &str) -> String {
    format!(
        "[[registry]]\nname = \"{name}\"\nkind = \"acr\"\nurl = \"{}\"\ninsecure = true\nrepositories = [\"svc/api\"]\n{keys}\n",
        front.url()
    )
}

/// check says `ok (<source>)`, a baseline records, and the next `once` sees a pushed tag.
async fn proves_watching(setup: &Setup, front: &AcrFront, env: &[(&str, String)], source: &str) {
    let (code, out, err) = run(setup, &["check"], env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.trim_end().ends_with(&format!("ok ({source})")),
        "check names the source: {out}"
    );
    let (code, out, err) = run(setup, &["once"], env);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let digest = front
        .registry
        .push("svc/api", &format!("v{}", rand::random::<u16>()))
        .await;
    let (code, out, err) = run(setup, &["once"], env);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["data"]["kind"], "acr");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_client_secret_through_entra_and_the_exchange() {
    let entra = Entra::start(SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;
    let keys = |secret: &str| {
        format!(
            "tenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{secret}\"\n",
            entra.tenant(),
            entra.client_id()
        )
    };
    let env = [("AZURE_AUTHORITY_HOST", entra.url.clone())];
    let setup = Setup::new("", &block("acr", &front, &keys(SECRET)));
    proves_watching(&setup, &front, &env, "client secret").await;
    assert!(entra.counts().client_secret.load(Ordering::Relaxed) >= 3);
    assert!(front.exchanges() >= 3, "one exchange per process at least");

    // client_secret_file, read at load.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let from_file = Setup::new(
        "",
        &block(
            "acr",
            &front,
            &format!(
                "tenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\n",
                entra.tenant(),
                entra.client_id(),
                file.display()
            ),
        ),
    );
    let (code, out, err) = run(&from_file, &["check"], &env);
    assert_eq!(code, 0, "{out}{err}");

    // Entra refuses a wrong secret: the registry is never asked, check says invalid credentials.
    let refused = entra.counts().refused.load(Ordering::Relaxed);
    let exchanges = front.exchanges();
    let bad = Setup::new("", &block("acr-bad", &front, &keys("wrong-secret")));
    let (code, out, err) = run(&bad, &["check"], &env);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        line(&out, "acr-bad").ends_with("invalid credentials (401/403)"),
        "{out}"
    );
    assert!(entra.counts().refused.load(Ordering::Relaxed) > refused);
    assert_eq!(front.exchanges(), exchanges, "no exchange without a token");
    report(
        "ACR client secret: check / wrong secret",
        "ok (client secret) / invalid credentials (401/403)",
        "ok (client secret) / invalid credentials (401/403)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_workload_identity_as_aks_injects_it() {
    let entra = Entra::start(SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, entra.federated_token(3600)).unwrap();
    // Exactly what the AKS workload identity webhook injects.
    let env = [
        ("AZURE_CLIENT_ID", entra.client_id().to_owned()),
        ("AZURE_TENANT_ID", entra.tenant().to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AZURE_AUTHORITY_HOST", format!("{}/", entra.url)),
    ];
    let setup = Setup::new("", &block("acr", &front, ""));
    proves_watching(&setup, &front, &env, "workload identity").await;
    assert!(entra.counts().federated.load(Ordering::Relaxed) >= 3);

    // A token from an issuer the federated credential does not trust is refused by Entra.
    let stranger = Entra::start(SECRET).await;
    std::fs::write(&token_file, stranger.federated_token(3600)).unwrap();
    let (code, out, _) = run(&setup, &["check"], &env);
    assert_eq!(code, 1);
    assert!(out.contains("invalid credentials (401/403)"), "{out}");

    // The file is not mounted: the source says why, without a secret.
    std::fs::remove_file(&token_file).unwrap();
    let (code, out, _) = run(&setup, &["check"], &env);
    assert_eq!(code, 1);
    assert!(
        line(&out, "acr").ends_with("no credentials: federated token file not found"),
        "{out}"
    );
    report(
        "ACR workload identity: missing token file",
        line(&out, "acr")
            .split_once("  ")
            .map_or("", |x| x.1.trim()),
        "no credentials: federated token file not found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_managed_identity_from_identity_endpoint_and_imds() {
    let entra = Entra::start(SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;

    // App Service / Container Apps: IDENTITY_ENDPOINT + IDENTITY_HEADER; client_id selects the
    // user-assigned identity.
    let env = [
        ("IDENTITY_ENDPOINT", format!("{}/msi/token", entra.url)),
        ("IDENTITY_HEADER", entra.identity_header().to_owned()),
    ];
    let setup = Setup::new(
        "",
        &block(
            "acr",
            &front,
            &format!("client_id = \"{}\"\n", entra.user_assigned()),
        ),
    );
    proves_watching(&setup, &front, &env, "managed identity (IDENTITY_ENDPOINT)").await;
    assert!(entra.counts().identity_endpoint.load(Ordering::Relaxed) >= 3);
    let wrong_header = [env[0].clone(), ("IDENTITY_HEADER", "guess".to_owned())];
    let (code, out, _) = run(&setup, &["check"], &wrong_header);
    assert_eq!(code, 1);
    assert!(out.contains("invalid credentials (401/403)"), "{out}");
    let down = [
        (
            "IDENTITY_ENDPOINT",
            format!("http://127.0.0.1:{}/msi/token", free_port()),
        ),
        env[1].clone(),
    ];
    let (code, out, _) = run(&setup, &["check"], &down);
    assert_eq!(code, 1);
    assert!(
        line(&out, "acr").ends_with("no credentials: managed identity endpoint unreachable"),
        "{out}"
    );

    // IMDS, at the address AZURE_POD_IDENTITY_AUTHORITY_HOST names (as Azure's own SDKs honour
    // it), system-assigned: the stand-in checks `Metadata: true` and api-version 2018-02-01.
    let imds = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", entra.url.clone())];
    let system = Setup::new("", &block("acr", &front, ""));
    proves_watching(&system, &front, &imds, "managed identity").await;
    assert!(entra.counts().imds.load(Ordering::Relaxed) >= 3);
    report(
        "ACR managed identity: IDENTITY_ENDPOINT and IMDS request shapes verified",
        format!(
            "{} + {} grants",
            entra.counts().identity_endpoint.load(Ordering::Relaxed),
            entra.counts().imds.load(Ordering::Relaxed)
        ),
        ">= 3 each",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_without_any_identity_pulls_anonymously() {
    let entra = Entra::start(SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;
    let setup = Setup::new("", &block("acr", &front, ""));
    // No Azure environment, no metadata server: anonymous, which ACR refuses unless anonymous
    // pull is enabled on the registry.
    let (code, out, _) = run(&setup, &["check"], &[]);
    assert_eq!(code, 1);
    assert!(
        line(&out, "acr").ends_with("invalid credentials (401/403)"),
        "{out}"
    );
    front.set_anonymous_pull(true);
    proves_watching(&setup, &front, &[], "anonymous: no managed identity").await;
    let c = entra.counts();
    assert_eq!(
        c.client_secret.load(Ordering::Relaxed)
            + c.federated.load(Ordering::Relaxed)
            + c.imds.load(Ordering::Relaxed),
        0
    );
}

/// The value of the `/metrics` series whose line starts with `name` and carries every label.
async fn series(admin: &str, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_tokens_that_expire_in_5s_never_get_a_401() {
    let entra = Entra::start(SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;
    entra.set_token_lifetime(5);
    front.set_token_lifetime(5);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, entra.federated_token(8)).unwrap();
    let env = [
        ("AZURE_CLIENT_ID", entra.client_id().to_owned()),
        ("AZURE_TENANT_ID", entra.tenant().to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AZURE_AUTHORITY_HOST", entra.url.clone()),
    ];
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\n",
        &block("acr", &front, ""),
    );
    let daemon = Daemon::start(&mut command(&setup, &["run"], &env));
    // The kubelet rotates the projected token; here every 3 s, each valid for 8 s, so only a
    // source that re-reads the file keeps working.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::fs::write(&token_file, entra.federated_token(8)).unwrap();
    }
    let ok = series(&setup.admin, "regwatch_scans_total", &["result=\"ok\""]).await;
    let failed = series(&setup.admin, "regwatch_scans_total", &[]).await - ok;
    let client_4xx = series(
        &setup.admin,
        "regwatch_registry_requests_total",
        &["status=\"4xx\""],
    )
    .await;
    let (_, _, err) = daemon.stop();
    let log = front.log();
    let unauthorized: Vec<_> = log.iter().filter(|s| s.status == 401).collect();
    let grants = entra.counts().federated.load(Ordering::Relaxed);
    report(
        "ACR 5 s tokens, 30 s run: scan cycles ok / failed",
        format!("{ok} / {failed}"),
        ">= 10 / 0",
    );
    report(
        "ACR 5 s tokens, 30 s run: requests answered 401 beyond the first challenge",
        unauthorized.len().saturating_sub(1),
        "0",
    );
    report(
        "ACR 5 s tokens, 30 s run: Entra grants / exchanges / registry tokens",
        format!(
            "{grants} / {} / {}",
            front.exchanges(),
            front.access_tokens_issued()
        ),
        "> 1 each (refreshed before expiry)",
    );
    assert!(
        ok >= 10.0 && failed == 0.0,
        "ok={ok} failed={failed}\n{err}"
    );
    assert_eq!(
        unauthorized.len(),
        1,
        "only the first, anonymous challenge: {unauthorized:?}\n{err}"
    );
    // This front's registry has no ACR API: `/acr/v1/<repo>/_tags` answers 404 once, and the
    // adapter lists through tags/list from then on (registry::native).
    let native_404 = log
        .iter()
        .filter(|s| s.path.starts_with("/acr/v1/") && s.status == 404)
        .count();
    assert_eq!(native_404, 1, "the native listing is asked once: {err}");
    assert_eq!(
        client_4xx, 2.0,
        "metrics agree: two 4xx (the challenge, the native listing's 404)"
    );
    assert!(
        grants > 2 && front.exchanges() > 2,
        "tokens were renewed, not reused past expiry"
    );
    assert_eq!(entra.counts().refused.load(Ordering::Relaxed), 0, "{err}");
}

/// A login server whose `/oauth2/exchange` answers 307 to another origin (a proxy, a compromised
/// or misconfigured front): a 307 keeps the method and body, so following it would post the Entra
/// access token (valid for every registry the identity can pull from, not just this one) to that
/// origin. The same holds for the refresh token POSTed to the realm. Neither may be followed.
#[tokio::test(flavor = "multi_thread")]
async fn acr_exchange_and_realm_never_follow_a_redirect_with_the_token() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let entra = Entra::start(SECRET).await;
    // The other origin: records every body it receives.
    let stolen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = {
        let stolen = stolen.clone();
        axum::Router::new().fallback(move |body: String| {
            let stolen = stolen.clone();
            async move {
                stolen.lock().unwrap().push(body);
                StatusCode::NOT_FOUND
            }
        })
    };
    let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}", sink_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(sink_listener, sink).await.unwrap() });

    for redirected in ["/oauth2/exchange", "/oauth2/token"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let (to, me) = (format!("{sink_url}/steal"), host.clone());
        let front = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, _h: HeaderMap| {
                let (to, me) = (to.clone(), me.clone());
                async move {
                    let path = uri.path();
                    if path == redirected && method == "POST" {
                        return (StatusCode::TEMPORARY_REDIRECT, [("location", to)])
                            .into_response();
                    }
                    if path == "/oauth2/exchange" {
                        // A refresh token that lives an hour (only its `exp` is read).
                        let claims = base64::Engine::encode(
                            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                            format!("{{\"exp\":{}}}", now() + 3600),
                        );
                        return (
                            [("content-type", "application/json")],
                            format!("{{\"refresh_token\":\"e30.{claims}.sig\"}}"),
                        )
                            .into_response();
                    }
                    (
                        StatusCode::UNAUTHORIZED,
                        [(
                            "www-authenticate",
                            format!("Bearer realm=\"http://{me}/oauth2/token\",service=\"{me}\""),
                        )],
                    )
                        .into_response()
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, front).await.unwrap() });
        let block = format!(
            "[[registry]]\nname = \"acr\"\nkind = \"acr\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"svc/api\"]\ntenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{SECRET}\"\n",
            entra.tenant(),
            entra.client_id()
        );
        let setup = Setup::new("", &block);
        let env = [("AZURE_AUTHORITY_HOST", entra.url.clone())];
        let (code, out, err) = run(&setup, &["check"], &env);
        assert_eq!(code, 1, "{out}{err}");
        let stolen = stolen.lock().unwrap().clone();
        report(
            &format!("ACR: a 307 from {redirected} to another origin: bodies it received"),
            stolen.len(),
            "0",
        );
        assert!(
            stolen.is_empty(),
            "{redirected} redirect was followed; the other origin got: {stolen:?}"
        );
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `client_id` without a secret names a user-assigned managed identity. When IMDS says the host has
/// no such identity (400 "Identity not found", a typo or an identity not yet assigned), that is a
/// misconfiguration to report, not "no identity here": on a registry with anonymous pull, silently
/// going anonymous would watch with other rights than asked and hide the mistake.
#[tokio::test(flavor = "multi_thread")]
async fn acr_named_managed_identity_missing_is_an_error_not_anonymous() {
    let entra = Entra::start(SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;
    front.set_anonymous_pull(true);
    let imds = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", entra.url.clone())];
    let setup = Setup::new(
        "",
        &block(
            "acr",
            &front,
            "client_id = \"00000000-0000-4000-8000-00000000dead\"\n",
        ),
    );
    let (code, out, err) = run(&setup, &["check"], &imds);
    report(
        "ACR: client_id of an identity IMDS does not have, anonymous pull on: check",
        line(&out, "acr")
            .split_once("  ")
            .map_or("", |x| x.1.trim()),
        "no credentials: ... (no anonymous fallback)",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        line(&out, "acr").contains("no credentials: no managed identity on this host"),
        "{out}"
    );
    // The same host without client_id (system-assigned, which the stand-in has) still works.
    let system = Setup::new("", &block("acr", &front, ""));
    let (code, out, err) = run(&system, &["check"], &imds);
    assert_eq!(code, 0, "{out}{err}");
}

/// Six repositories the registry denies (403, as ACR answers an identity whose role assignments
/// leave them out) and one it serves, scanned in one `once` cycle. Every refusal used to drop the
/// source's Entra and ACR refresh tokens, so each forbidden repository cost one Entra grant and
/// one exchange per cycle, with every scan waiting on the minting lock. A token refused moments
/// after it was minted is refused for the identity it names, which a new one shares: at most one
/// Entra grant and one exchange per cycle, however many repositories are forbidden, one at a
/// time or all at once.
#[tokio::test(flavor = "multi_thread")]
async fn forbidden_repositories_cost_at_most_one_entra_grant_per_cycle() {
    let entra = Entra::start(SECRET).await;
    let front = AcrFront::start(&entra).await;
    front.registry.push("svc/api", "v1").await;
    let forbidden: Vec<String> = (0..6).map(|i| format!("svc/locked{i}")).collect();
    for repo in &forbidden {
        front.registry.push(repo, "v1").await;
        front.forbid(repo);
    }
    let repositories: Vec<String> = std::iter::once("svc/api")
        .chain(forbidden.iter().map(String::as_str))
        .map(|r| format!("\"{r}\""))
        .collect();
    let env = [("AZURE_AUTHORITY_HOST", entra.url.clone())];
    for concurrency in [1, 6] {
        let setup = Setup::new(
            "",
            &format!(
                "[[registry]]\nname = \"acr\"\nkind = \"acr\"\nurl = \"{}\"\ninsecure = true\nrepositories = [{}]\nconcurrency = {concurrency}\ntenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{SECRET}\"\n",
                front.url(),
                repositories.join(", "),
                entra.tenant(),
                entra.client_id()
            ),
        );
        let grants_before = entra.counts().client_secret.load(Ordering::Relaxed);
        let exchanges_before = front.exchanges();
        let seen_before = front.log().len();
        let (code, out, err) = run(&setup, &["once"], &env);
        let grants = entra.counts().client_secret.load(Ordering::Relaxed) - grants_before;
        let exchanges = front.exchanges() - exchanges_before;
        let seen = front.log().split_off(seen_before);
        let denied = seen.iter().filter(|s| s.status == 403).count();
        let served = seen
            .iter()
            .any(|s| s.path == "/v2/svc/api/tags/list" && s.status == 200);
        report(
            &format!(
                "ACR, 6 of 7 repositories denied (403), one cycle at concurrency {concurrency}: Entra grants / exchanges / 403s"
            ),
            format!("{grants} / {exchanges} / {denied}"),
            "<= 1 / <= 1 / >= 6",
        );
        assert_ne!(
            code, 0,
            "the denied repositories fail the cycle: {out}{err}"
        );
        assert!(err.contains("invalid credentials"), "{err}");
        assert!(denied >= 6, "every denied repository was asked: {seen:?}");
        assert!(
            served,
            "the permitted repository was listed: {seen:?}\n{err}"
        );
        assert!(
            grants <= 1 && exchanges <= 1,
            "{grants} Entra grants, {exchanges} exchanges in one cycle\n{err}"
        );
    }
}
