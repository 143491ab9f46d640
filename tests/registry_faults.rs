//! Registry faults: a chaos proxy in front of the real `docker-registry` (500s, 429s, truncated
//! bodies, dropped `Link`s, stalls) must cause no spurious events; `Retry-After` is honoured; the
//! rate limit holds at the wire; hostile responses are errors, never events or panics.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use regwatch::config;
use regwatch::registry::{Registry as _, RegistryError, oci::OciRegistry};
use regwatch::store::{RepoState, StateStore, Store};
use regwatch::watch::scan::{Output, Scanner};
use support::proxy::{self, Fault};
use support::synthetic::{Quirk, Synthetic, serve};
use support::{Auth, Registry, Setup, report};
use tokio::sync::Notify;

fn registry_block(host: &str, extra: &str) -> String {
    format!(
        "[[registry]]\nname = \"chaos\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/*\"]\nmutable_tags = [\"latest\"]\npage_size = 2\nrequest_timeout = \"1s\"\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_yields_no_spurious_events_and_the_daemon_stays_live() {
    let registry = Registry::start(Auth::None);
    for repo in ["team/a", "team/b", "team/c", "team/d", "team/e"] {
        for tag in ["v1", "v2", "v3", "latest"] {
            registry.push(repo, tag).await;
        }
    }
    let (proxy, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"\nemit_removed = true\n",
        &registry_block(&host, "rate_limit = 1000\n"),
    );
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "clean baseline; {err}");

    proxy.set_chaos(
        0.25,
        vec![
            Fault::Error500,
            Fault::TooManyRequests(1),
            Fault::Truncate,
            Fault::DropLink,
            Fault::Stall(Duration::from_millis(1500)),
        ],
    );
    let daemon = setup.spawn();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let injected = proxy.injected.load(Ordering::Relaxed);
    let requests = proxy.log.lock().unwrap().len();
    let spurious = daemon.stdout.lock().unwrap().len();

    // Faults off: a tag pushed now is still reported, once, despite any backoff.
    proxy.set_chaos(0.0, vec![]);
    let digest = registry.push("team/c", "v4").await;
    let started = Instant::now();
    while daemon.stdout.lock().unwrap().len() <= spurious
        && started.elapsed() < Duration::from_secs(40)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out, err) = daemon.stop();
    assert_eq!(code, 0, "{err}");
    let cycles_failed =
        err.matches("scan incomplete").count() + err.matches("listing failed").count();
    println!(
        "chaos: {requests} requests, {injected} faults injected, {cycles_failed} cycles incomplete or failed"
    );
    report(
        "registry chaos: requests / faults injected",
        format!("{requests} / {injected}"),
        "> 0 faults",
    );
    report("registry chaos: spurious events", spurious, "0");
    assert!(
        injected >= 5,
        "the chaos must actually bite ({injected} faults)"
    );
    assert!(cycles_failed > 0, "some cycles must have failed: {err}");
    assert_eq!(spurious, 0, "faults produced events:\n{out}");
    let events = support::json_lines(&out);
    assert_eq!(
        events.len(),
        1,
        "exactly the new tag after recovery:\n{out}"
    );
    assert_eq!(events[0]["data"]["tag"], "v4");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    report(
        "registry chaos: tag pushed after faults reported",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
        "yes",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_and_long_waits_fail_fast() {
    let registry = Registry::start(Auth::None);
    registry.push("team/app", "v1").await;
    let (proxy, host) = proxy::start(&registry.url()).await;
    let cfg = config::parse(&registry_block(&host, ""))
        .unwrap()
        .registries
        .remove(0);
    let client = OciRegistry::new(&cfg).unwrap();

    *proxy.first_request_fault.lock().unwrap() = Some(Fault::TooManyRequests(2));
    let started = Instant::now();
    assert_eq!(client.list_tags("team/app").await.unwrap().len(), 1);
    let log = proxy.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "one 429, one retry: {log:?}");
    let waited = log[1].at - log[0].at;
    report(
        "429 Retry-After: 2 s, retried after",
        format!("{:.2} s", waited.as_secs_f64()),
        ">= 2 s",
    );
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A Retry-After beyond what one request may wait fails the listing at once; the scheduler backs off.
    *proxy.first_request_fault.lock().unwrap() = Some(Fault::TooManyRequests(3600));
    let started = Instant::now();
    let e = client.list_tags("team/other").await.unwrap_err();
    assert!(
        matches!(e, RegistryError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3600)),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_rate_stays_within_the_limit() {
    const RATE: u32 = 5;
    let registry = Registry::start(Auth::Htpasswd("ci".into(), "pw".into()));
    let repos: Vec<String> = (0..10).map(|i| format!("team/r{i}")).collect();
    for r in &repos {
        registry.push(r, "latest").await;
    }
    let (proxy, host) = proxy::start(&registry.url()).await;
    let setup = Setup::new(
        "",
        &registry_block(
            &host,
            &format!(
                "rate_limit = {RATE}\nconcurrency = 8\nusername = \"ci\"\npassword = \"pw\"\n"
            ),
        ),
    );
    let (code, _, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let log = proxy.log.lock().unwrap().clone();
    // Catalog pages, 401 challenges, tags/list and HEADs all count.
    assert!(log.len() >= 20, "{} requests", log.len());
    let heads = log.iter().filter(|s| s.method == "HEAD").count();
    assert_eq!(heads, 10, "one HEAD per mutable tag");
    let max_in_window = log
        .iter()
        .map(|first| {
            log.iter()
                .filter(|s| s.at >= first.at && s.at < first.at + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let span = (log.last().unwrap().at - log[0].at).as_secs_f64();
    // governor allows a burst of RATE, then RATE per second.
    let sustained = (log.len() as f64 - f64::from(RATE)) / span;
    report(
        &format!("rate limit {RATE}/s: busiest 1 s window / sustained"),
        format!(
            "{max_in_window} / {sustained:.2}/s over {} requests",
            log.len()
        ),
        &format!("<= {} / <= {RATE}", 2 * RATE),
    );
    assert!(
        max_in_window <= 2 * RATE as usize,
        "{max_in_window} requests in one second"
    );
    assert!(
        sustained <= f64::from(RATE) * 1.05,
        "sustained {sustained:.2}/s"
    );

    // Token requests count too: a token-auth registry behind the same kind of proxy.
    let synthetic = Arc::new(Synthetic::default());
    for r in &repos {
        synthetic.put(r, "latest", 0);
    }
    *synthetic.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "t".into()));
    let upstream = serve(synthetic.clone()).await;
    let (proxy, host) = proxy::start(&format!("http://{upstream}")).await;
    // The realm names the host the registry believes it is: the proxy, so tokens pass it too.
    *synthetic.host.lock().unwrap() = host.clone();
    let names = repos
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "[[registry]]\nname = \"tok\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nusername = \"u\"\npassword = \"p\"\nrate_limit = {RATE}\nrepositories = [{names}]\nmutable_tags = [\"latest\"]\n"
    );
    let cfg = config::parse(&text).unwrap().registries.remove(0);
    let scanner = Scanner::new(&cfg, config::FirstRun::Baseline, false).unwrap();
    let cycle = scanner
        .cycle(&Output::DryRun { store: None }, || false)
        .await
        .unwrap();
    assert_eq!(cycle.failed, 0);
    let log = proxy.log.lock().unwrap().clone();
    let tokens = log.iter().filter(|s| s.path == "/token").count();
    assert!(tokens >= 10, "one token per repository scope ({tokens})");
    let span = (log.last().unwrap().at - log[0].at).as_secs_f64();
    let sustained = (log.len() as f64 - f64::from(RATE)) / span;
    report(
        &format!("rate limit {RATE}/s with token auth: sustained"),
        format!(
            "{sustained:.2}/s over {} requests ({tokens} token)",
            log.len()
        ),
        &format!("<= {RATE}"),
    );
    assert!(
        sustained <= f64::from(RATE) * 1.05,
        "sustained {sustained:.2}/s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_stay_with_their_host() {
    // The registry demands a token; its tags/list redirects to another host (a blob store, say).
    let registry = Arc::new(Synthetic::default());
    registry.put("team/app", "v1", 0);
    *registry.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "tok".into()));
    let host = serve(registry.clone()).await;
    let elsewhere = Arc::new(Synthetic::default());
    elsewhere.put("team/app", "v1", 0);
    let other = serve(elsewhere.clone()).await;
    *registry.redirect_to.lock().unwrap() = Some(format!("http://{other}"));

    let text = format!(
        "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nusername = \"u\"\npassword = \"p\"\nrepositories = [\"team/app\"]\n"
    );
    let cfg = config::parse(&text).unwrap().registries.remove(0);
    let client = OciRegistry::new(&cfg).unwrap();
    let tags = client.list_tags("team/app").await.unwrap();
    assert_eq!(tags.len(), 1, "the redirect was followed");
    let seen = elsewhere.authorization_seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the other host was asked");
    let leaked = seen.iter().filter(|a| a.is_some()).count();
    report(
        "Authorization headers sent across a cross-host redirect",
        leaked,
        "0",
    );
    assert_eq!(leaked, 0, "{seen:?}");
    let at_registry = registry.authorization_seen.lock().unwrap().clone();
    assert!(
        at_registry
            .iter()
            .any(|a| a.as_deref() == Some("Bearer tok")),
        "the registry itself got the token"
    );

    // Without insecure = true, plain http is refused before any credential is sent.
    let refused = config::parse(&text.replace("insecure = true\n", "")).unwrap_err();
    assert!(refused.message.contains("insecure = true"), "{refused}");
}

/// `Authorization` headers a synthetic registry received.
fn credentials_seen(state: &Synthetic) -> Vec<String> {
    state
        .authorization_seen
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_from_another_origin_gets_no_credentials() {
    // Another host that demands a token from its own realm, and would accept u:p there.
    let elsewhere = Arc::new(Synthetic::default());
    elsewhere.put("team/app", "v1", 0);
    elsewhere.put("team/other", "v1", 0);
    *elsewhere.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "theirs".into()));
    let other = serve(elsewhere.clone()).await;
    let block = |host: &str| {
        format!(
            "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nusername = \"u\"\npassword = \"p\"\nrepositories = [\"team/app\"]\n"
        )
    };

    // 1. An open registry whose tags/list redirects there: the first 401 it meets is foreign.
    let open = Arc::new(Synthetic::default());
    open.put("team/app", "v1", 0);
    *open.redirect_to.lock().unwrap() = Some(format!("http://{other}"));
    let host = serve(open.clone()).await;
    let cfg = config::parse(&block(&host)).unwrap().registries.remove(0);
    let first_contact = OciRegistry::new(&cfg).unwrap().list_tags("team/app").await;

    // 2. A token registry, already authenticated against its own realm, that starts redirecting:
    //    the foreign challenge must not replace the registry's realm.
    let registry = Arc::new(Synthetic::default());
    registry.put("team/app", "v1", 0);
    registry.put("team/other", "v1", 0);
    *registry.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "ours".into()));
    let host = serve(registry.clone()).await;
    let cfg = config::parse(&block(&host)).unwrap().registries.remove(0);
    let client = OciRegistry::new(&cfg).unwrap();
    assert_eq!(client.list_tags("team/app").await.unwrap().len(), 1);
    *registry.redirect_to.lock().unwrap() = Some(format!("http://{other}"));
    let redirected = client.list_tags("team/other").await;
    *registry.redirect_to.lock().unwrap() = None;
    let after = client.list_tags("team/other").await;

    let leaked = credentials_seen(&elsewhere);
    report(
        "credentials sent to a realm named by another origin's 401",
        leaked.len(),
        "0",
    );
    assert!(
        !elsewhere.authorization_seen.lock().unwrap().is_empty(),
        "the other origin was reached"
    );
    assert_eq!(leaked, Vec::<String>::new(), "sent to the foreign origin");
    assert_eq!(elsewhere.token_requests.load(Ordering::Relaxed), 0);
    for (what, result) in [
        ("first contact", &first_contact),
        ("redirected", &redirected),
    ] {
        let e = result.as_ref().expect_err(what);
        assert!(
            matches!(e, RegistryError::Protocol(m) if m.contains("not the registry's origin")),
            "{what}: {e}"
        );
    }
    assert_eq!(
        after.unwrap().len(),
        1,
        "the registry's own realm still serves once the redirect stops"
    );
    assert_eq!(
        credentials_seen(&registry).last().map(String::as_str),
        Some("Bearer ours"),
        "with the registry's own token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credentials_over_an_https_to_http_redirect() {
    // One host and port: TLS serves the registry (token auth, realm over https), plain HTTP serves
    // a copy of it that records what it is sent. The registry redirects tags/list to plain http.
    let registry = Arc::new(Synthetic::default());
    registry.put("team/app", "v1", 0);
    *registry.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "tok".into()));
    let plain = Arc::new(Synthetic::default());
    plain.put("team/app", "v1", 0);
    let host = support::tls::serve_dual(
        support::synthetic::app(registry.clone()),
        support::synthetic::app(plain.clone()),
    )
    .await;
    *registry.host.lock().unwrap() = host.clone();
    *registry.realm.lock().unwrap() = Some(format!("https://{host}/token"));
    *registry.redirect_to.lock().unwrap() = Some(format!("http://{host}"));

    let text = format!(
        "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"https://{host}\"\ninsecure = true\nusername = \"u\"\npassword = \"p\"\nrepositories = [\"team/app\"]\n"
    );
    let cfg = config::parse(&text).unwrap().registries.remove(0);
    let client = OciRegistry::new(&cfg).unwrap();
    let result = client.list_tags("team/app").await;
    assert!(
        registry.token_requests.load(Ordering::Relaxed) >= 1,
        "the token flow ran over TLS"
    );
    let leaked = credentials_seen(&plain);
    report(
        "credentials sent over an https -> http redirect (same host and port)",
        leaked.len(),
        "0",
    );
    assert_eq!(leaked, Vec::<String>::new(), "sent in clear text");
    let e = result.expect_err("the downgrade is refused");
    assert!(e.to_string().contains("https to plain http"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_responses_are_errors_not_events() {
    let state = Arc::new(Synthetic::default());
    state.put("team/app", "v1", 0);
    let host = serve(state.clone()).await;
    let text = format!(
        "[[registry]]\nname = \"hostile\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\nrate_limit = 1000\n"
    );
    let cfg = config::parse(&text).unwrap().registries.remove(0);
    let scanner = Scanner::new(&cfg, config::FirstRun::Baseline, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let output = Output::Commit {
        store: store.clone(),
        published: Arc::new(Notify::new()),
    };
    scanner.cycle(&output, || false).await.unwrap();
    let before = store.repo_state(&scanner.identity, "team/app").unwrap();
    assert!(matches!(before, Some(RepoState::Known(_))));

    // (A Link to another host is refused in tests/pagination.rs.)
    let mut refused = 0;
    for quirk in [
        Quirk::HugeBody,
        Quirk::InvalidUtf8,
        Quirk::HtmlContentType,
        Quirk::BadChallenge,
    ] {
        *state.quirk.lock().unwrap() = quirk;
        let direct = scanner.registry.list_tags("team/app").await;
        assert!(direct.is_err(), "{quirk:?} must fail: {direct:?}");
        let cycle = scanner.cycle(&output, || false).await.unwrap();
        assert_eq!((cycle.events, cycle.failed), (0, 1), "{quirk:?}");
        refused += 1;
        assert_eq!(
            store.repo_state(&scanner.identity, "team/app").unwrap(),
            before,
            "{quirk:?} touched the snapshot"
        );
    }
    assert_eq!(
        store.outbox_len().unwrap(),
        0,
        "no events from hostile responses"
    );
    let metrics = regwatch::metrics::get().render();
    assert!(
        metrics.contains("regwatch_repository_scan_errors_total{registry=\"hostile\"}"),
        "{metrics}"
    );
    report(
        "hostile responses refused (huge, bad UTF-8, HTML, bad challenge)",
        format!("{refused}/4"),
        "4/4, 0 events",
    );
}
