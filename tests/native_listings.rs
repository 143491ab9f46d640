//! Registry-native listings (issue 12, §4) against stand-ins of ACR's `_tags`, Harbor's
//! `listArtifacts` and Docker Hub's "List repository tags" (see `support::native`): a re-pushed
//! release tag is one `tag.updated` and a new tag one `tag.added`, both with digest and
//! `pushed_at`, at no HEAD and no manifest GET; a refused native API falls back to `tags/list` +
//! HEAD; a listing whose paging breaks leaves the snapshot as it was.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use support::native::{Native, Quirk, Vendor, serve};
use support::token_server::{Style, TokenServer};
use support::{Auth, Registry, Setup, assert_schema_valid, json_lines, report};

/// Tags pushed before the baseline: more than one page of every API (Harbor and the Hub serve
/// at most 100 a page; ACR is asked for 50).
const TAGS: usize = 130;

fn repo_of(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Acr => "team/app",
        // Below the project, a nested name: Harbor wants it encoded twice.
        Vendor::Harbor => "proj/team/app",
        Vendor::Hub => "acme/app",
    }
}

/// A stand-in for `vendor` with `TAGS` tags and `v1.2.3`, and a config watching it.
async fn start(vendor: Vendor) -> (Arc<Native>, Setup) {
    let state = Native::new(vendor, "robot", "robot-secret");
    let host = serve(state.clone()).await;
    let repo = repo_of(vendor);
    for i in 0..TAGS {
        state.push(repo, &format!("t{i:03}"));
    }
    let block = match vendor {
        Vendor::Acr => format!(
            "kind = \"acr\"\nurl = \"http://{host}\"\npage_size = 50\nrepositories = [\"{repo}\"]\n"
        ),
        Vendor::Harbor => {
            format!("kind = \"harbor\"\nurl = \"http://{host}\"\nrepositories = [\"{repo}\"]\n")
        }
        Vendor::Hub => format!(
            "kind = \"dockerhub\"\nurl = \"http://{host}\"\nhub_api_url = \"http://{}\"\nrepositories = [\"{repo}\"]\n",
            state.hub_host.lock().unwrap()
        ),
    };
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"native\"\n{block}insecure = true\nusername = \"robot\"\npassword = \"robot-secret\"\n"
        ),
    );
    (state, setup)
}

/// Asserts that `at` (an event's RFC 3339 `pushed_at`) is the stand-in's push time.
fn assert_pushed_at(at: &serde_json::Value, pushed: SystemTime) {
    let at = humantime::parse_rfc3339(at.as_str().expect("pushed_at is set")).unwrap();
    let skew = at.duration_since(pushed).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_millis(2), "pushed_at off by {skew:?}");
}

async fn repush_and_new_tag(vendor: Vendor) {
    let (state, setup) = start(vendor).await;
    let repo = repo_of(vendor);
    let old = state.push(repo, "v1.2.3");
    // Harbor's artifact pages hide accessories' tags, so its names come from one tags/list per
    // cycle (see `harbor_cosign_signature_is_seen_although_listartifacts_hides_accessories`).
    let tags_lists = usize::from(vendor == Vendor::Harbor);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "baseline: {err}");
    assert_eq!(state.manifest_requests(), 0, "a baseline costs no HEAD");
    assert_eq!(
        state.tags_list_requests.load(Ordering::Relaxed),
        tags_lists,
        "listed natively: {err}"
    );

    state.reset_counts();
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "idle: {err}");
    let pages = state.native_requests.load(Ordering::Relaxed);
    let auth = state.token_requests.load(Ordering::Relaxed);
    let total = state.requests.load(Ordering::Relaxed);
    // 131 tags: two pages of 100 (Harbor, Hub), three of 50 (ACR, page_size = 50).
    let expected_pages = if vendor == Vendor::Acr { 3 } else { 2 };
    report(
        &format!(
            "{vendor:?} native: listing pages per idle cycle ({} tags)",
            TAGS + 1
        ),
        pages,
        &expected_pages.to_string(),
    );
    report(
        &format!("{vendor:?} native: requests per `once` (pages + auth, incl. 401s)"),
        total,
        "pages + auth",
    );
    report(
        &format!("{vendor:?} native: token or login requests per process"),
        auth,
        // ACR fetches a token and the Hub logs in, once; Harbor sends Basic on every request.
        if matches!(vendor, Vendor::Harbor) {
            "0 (Basic)"
        } else {
            "1 (a token or a login)"
        },
    );
    assert_eq!(pages, expected_pages);
    assert_eq!(state.manifest_requests(), 0);
    let names = state.tags_list_requests.load(Ordering::Relaxed);
    report(
        &format!("{vendor:?} native: tags/list requests per idle cycle"),
        names,
        "1 for Harbor (tag names), else 0",
    );
    assert_eq!(names, tags_lists);

    // Re-pushed release tag: same name, new digest.
    state.reset_counts();
    let new = state.push(repo, "v1.2.3");
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "exactly one event: {out}{err}");
    let e = &events[0];
    assert_eq!(e["type"], "io.regwatch.tag.updated", "{e}");
    assert_eq!(e["data"]["repository"], repo);
    assert_eq!(e["data"]["tag"], "v1.2.3");
    assert_eq!(e["data"]["previous_digest"], old.digest.as_str());
    assert_eq!(e["data"]["digest"], new.digest.as_str());
    assert_pushed_at(&e["data"]["pushed_at"], new.pushed);
    let heads = state.manifest_requests();
    report(
        &format!("{vendor:?} native: HEAD + manifest GET for a re-pushed v1.2.3"),
        heads,
        "0",
    );
    assert_eq!(heads, 0);
    assert_eq!(state.tags_list_requests.load(Ordering::Relaxed), tags_lists);
    assert_schema_valid(&events);

    // A new tag.
    state.reset_counts();
    let added = state.push(repo, "v1.3.0");
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}{err}");
    let e = &events[0];
    assert_eq!(e["type"], "io.regwatch.tag.added", "{e}");
    assert_eq!(e["data"]["tag"], "v1.3.0");
    assert_eq!(e["data"]["digest"], added.digest.as_str());
    assert_pushed_at(&e["data"]["pushed_at"], added.pushed);
    let pages = state.native_requests.load(Ordering::Relaxed);
    report(
        &format!("{vendor:?} native: listing pages + HEADs for a cycle with one new tag"),
        pages + state.manifest_requests(),
        &format!("{expected_pages} + 0"),
    );
    assert_eq!(state.manifest_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_repush_is_one_update_without_heads() {
    repush_and_new_tag(Vendor::Acr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_repush_is_one_update_without_heads() {
    repush_and_new_tag(Vendor::Harbor).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_repush_is_one_update_without_heads() {
    repush_and_new_tag(Vendor::Hub).await;
}

/// ACR's scope for `_tags` is `metadata_read`, fetched from the realm the 401 named.
#[tokio::test(flavor = "multi_thread")]
async fn acr_native_listing_asks_for_metadata_read() {
    let (state, setup) = start(Vendor::Acr).await;
    let (code, out, err) = setup.regwatch(&["tags", "native", "team/app", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let tags: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tags.as_array().unwrap().len(), TAGS);
    assert!(
        tags[0]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert_eq!(
        state.scopes_asked.lock().unwrap().clone(),
        vec!["repository:team/app:metadata_read".to_owned()]
    );
    assert_eq!(state.manifest_requests(), 0);
}

/// A paging failure on any page: no event, and the snapshot stays the baseline, so the change
/// is reported once the API behaves. A refusal of a page after the first (404) fails the cycle
/// too: it is no reason to fall back to `tags/list` (only a refused first page is).
async fn broken_paging_changes_nothing(vendor: Vendor) {
    let (state, setup) = start(vendor).await;
    let repo = repo_of(vendor);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "baseline: {err}");
    let added = state.push(repo, "v9.0.0");
    for (quirk, reason) in [
        (Quirk::ForeignNext, "another host"),
        (Quirk::MalformedPage, "invalid"),
        (Quirk::FailingPage, "500"),
        (Quirk::RefusedPage, "failed after earlier pages"),
    ] {
        *state.quirk.lock().unwrap() = quirk;
        state.reset_counts();
        let (code, out, err) = setup.regwatch(&["once"]);
        assert_eq!(
            out, "",
            "{vendor:?} {quirk:?}: no event from a broken listing; {err}"
        );
        assert_ne!(code, 0, "{vendor:?} {quirk:?}: the cycle failed");
        assert!(
            err.contains(reason),
            "{vendor:?} {quirk:?}: says why: {err}"
        );
        assert_eq!(
            state.tags_list_requests.load(Ordering::Relaxed) + state.manifest_requests(),
            0,
            "{vendor:?} {quirk:?}: a broken native listing is an error, not a fallback"
        );
    }
    *state.quirk.lock().unwrap() = Quirk::None;
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["tag"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["v9.0.0"], "{vendor:?}: {out}");
    assert_eq!(events[0]["data"]["digest"], added.digest.as_str());
    report(
        &format!("{vendor:?} native: events from foreign/malformed/failing pages"),
        0,
        "0, then the change once the API behaves",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_broken_paging_changes_nothing() {
    broken_paging_changes_nothing(Vendor::Acr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_broken_paging_changes_nothing() {
    broken_paging_changes_nothing(Vendor::Harbor).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_broken_paging_changes_nothing() {
    broken_paging_changes_nothing(Vendor::Hub).await;
}

/// Harbor's API refusing the robot account (403), the Hub API not knowing the repository (404):
/// the Distribution API lists it, with HEADs for new tags, and events stay right.
async fn refused_native_api_falls_back(vendor: Vendor, refusal: u16) {
    let (state, setup) = start(vendor).await;
    let repo = repo_of(vendor);
    *state.native_refusal.lock().unwrap() = Some(refusal);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "baseline: {err}");
    assert!(
        state.tags_list_requests.load(Ordering::Relaxed) >= 1,
        "listed through tags/list"
    );
    assert_eq!(
        err.matches("native tag listing refused").count(),
        1,
        "logged once: {err}"
    );
    state.reset_counts();
    let added = state.push(repo, "v2.0.0");
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}{err}");
    assert_eq!(events[0]["type"], "io.regwatch.tag.added");
    assert_eq!(events[0]["data"]["digest"], added.digest.as_str());
    let heads = state.head_requests.load(Ordering::Relaxed);
    assert_eq!(heads, 1, "the new tag's digest came from a HEAD");
    assert_eq!(state.get_manifest_requests.load(Ordering::Relaxed), 0);
    report(
        &format!("{vendor:?} native API answering {refusal}: fallback HEADs for one new tag"),
        heads,
        "1",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_refused_falls_back_to_tags_list() {
    refused_native_api_falls_back(Vendor::Harbor, 403).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_refused_falls_back_to_tags_list() {
    refused_native_api_falls_back(Vendor::Hub, 404).await;
}

/// `kind = "acr"` in front of a plain `docker-registry` with token auth, which has no `/acr/v1`:
/// the daemon lists through `tags/list` + HEAD, says so once (not every cycle), and reports.
#[tokio::test(flavor = "multi_thread")]
async fn acr_without_the_acr_api_falls_back_once() {
    let tokens = TokenServer::start(&[("sp", "sp-password")], Style::AccessTokenOnly).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("svc/api", "v1").await;
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"",
        &format!(
            "[[registry]]\nname = \"acr\"\nkind = \"acr\"\nurl = \"{}\"\ninsecure = true\nusername = \"sp\"\npassword = \"sp-password\"\nrepositories = [\"svc/api\"]\n",
            registry.url()
        ),
    );
    let daemon = setup.spawn();
    support::wait_ready(&setup.admin).await;
    let digest = registry.push("svc/api", "v2").await;
    let started = Instant::now();
    while daemon.stdout.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more cycles, which must not log the fallback again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, out, err) = daemon.stop();
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}{err}");
    assert_eq!(events[0]["data"]["tag"], "v2");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    let logged = err.matches("native tag listing refused").count();
    report(
        "ACR kind without /acr/v1: fallback warnings over several cycles",
        logged,
        "1",
    );
    assert_eq!(logged, 1, "{err}");
}

/// Requests per cycle of the kinds without a native listing, counted at the registry (or at a
/// proxy in front of moto), for BENCHMARKS.md's table next to the native ones above: an idle
/// cycle over one repository of 131 tags, a mutable tag's HEAD, and a cycle with one new tag.
#[tokio::test(flavor = "multi_thread")]
async fn request_costs_of_the_other_kinds() {
    use support::synthetic::Synthetic;

    // oci: tags/list, plus a HEAD per mutable tag every cycle and per new tag.
    // gcr: the same client; Google's `manifest` map in tags/list spares every HEAD.
    for google in [false, true] {
        let label = if google { "gcr (manifest map)" } else { "oci" };
        let state = Arc::new(Synthetic::default());
        for i in 0..TAGS {
            state.put("team/app", &format!("t{i:03}"), 0);
        }
        state.put("team/app", "latest", 0);
        *state.google_manifest.lock().unwrap() = google;
        let host = support::synthetic::serve(state.clone()).await;
        let setup = Setup::new(
            "",
            &format!(
                "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{host}\"\ninsecure = true\nrepositories = [\"team/app\"]\nmutable_tags = [\"latest\"]\n"
            ),
        );
        let (code, out, err) = setup.regwatch(&["once"]);
        assert_eq!((code, out.as_str()), (0, ""), "{err}");
        let before = state.requests();
        let (code, out, err) = setup.regwatch(&["once"]);
        assert_eq!((code, out.as_str()), (0, ""), "{err}");
        let idle = state.requests() - before;
        let heads = state.head_requests.load(Ordering::Relaxed);
        state.put("team/app", "v2.0.0", 1);
        let before = state.requests();
        let heads_before = state.head_requests.load(Ordering::Relaxed);
        let (code, out, err) = setup.regwatch(&["once"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(json_lines(&out).len(), 1, "{out}");
        let new_tag = state.requests() - before;
        let new_heads = state.head_requests.load(Ordering::Relaxed) - heads_before;
        report(
            &format!("{label}: requests per idle cycle (131 tags, `latest` mutable)"),
            idle,
            if google {
                "1 (tags/list)"
            } else {
                "2 (tags/list + HEAD latest)"
            },
        );
        report(
            &format!("{label}: requests for a cycle with one new tag"),
            new_tag,
            if google { "1" } else { "3 (+1 HEAD)" },
        );
        if google {
            assert_eq!(
                (idle, new_tag, new_heads),
                (1, 1, 0),
                "heads so far {heads}"
            );
        } else {
            assert_eq!((idle, new_tag, new_heads), (2, 3, 2));
        }
    }

    // ecr: DescribeImages (moto ignores paging: one call per repository), counted at a proxy.
    let moto = support::moto::Moto::start();
    let client = moto.ecr_setup_client().await;
    client
        .create_repository()
        .repository_name("team/app")
        .send()
        .await
        .unwrap();
    support::moto::put_image(&client, "team/app", "v1").await;
    let (wire, proxy) = support::proxy::start(&moto.url).await;
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"ecr\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.us-east-1.amazonaws.com\"\nendpoint = \"http://{proxy}\"\ninsecure = true\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nrepositories = [\"team/app\"]\nmutable_tags = [\"latest\"]\n"
        ),
    );
    let run =
        |args: &[&str]| support::moto::run_without_ambient_aws(&setup, args, &[], "regwatch=debug");
    let (code, _, err) = run(&["once"]);
    assert_eq!(code, 0, "{err}");
    let before = wire.log.lock().unwrap().len();
    let (code, _, err) = run(&["once"]);
    assert_eq!(code, 0, "{err}");
    let idle = wire.log.lock().unwrap().len() - before;
    support::moto::put_image(&client, "team/app", "v2").await;
    let before = wire.log.lock().unwrap().len();
    let (code, out, err) = run(&["once"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_lines(&out).len(), 1, "{out}");
    let new_tag = wire.log.lock().unwrap().len() - before;
    report(
        "ecr: requests per idle cycle (moto, one repository)",
        idle,
        "1 (DescribeImages)",
    );
    report("ecr: requests for a cycle with one new tag", new_tag, "1");
    assert_eq!((idle, new_tag), (1, 1));
}

/// A Harbor stand-in with `TAGS` tags in `proj/team/app`, watched with `emit_removed = true`.
async fn harbor_emitting_removals() -> (Arc<Native>, Setup) {
    let state = Native::new(Vendor::Harbor, "robot", "robot-secret");
    let host = serve(state.clone()).await;
    let repo = repo_of(Vendor::Harbor);
    for i in 0..TAGS {
        state.push(repo, &format!("t{i:03}"));
    }
    let setup = Setup::new(
        "emit_removed = true",
        &format!(
            "[[registry]]\nname = \"native\"\nkind = \"harbor\"\nurl = \"http://{host}\"\ninsecure = true\nusername = \"robot\"\npassword = \"robot-secret\"\nrepositories = [\"{repo}\"]\n"
        ),
    );
    (state, setup)
}

/// Harbor's `listArtifacts` never lists accessories, and a cosign signature pushed as
/// `sha256-<hex>.sig` is one (its cosign middleware records it as the subject's
/// `signature.cosign` accessory), so the `.sig` tag is on no artifact page; `tags/list` lists it.
/// The signature must still be seen: one `signature.added` naming the subject, no `tag.*`.
#[tokio::test(flavor = "multi_thread")]
async fn harbor_cosign_signature_is_seen_although_listartifacts_hides_accessories() {
    let (state, setup) = harbor_emitting_removals().await;
    let repo = repo_of(Vendor::Harbor);
    let image = state.push(repo, "v1.0.0");
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "baseline: {err}");
    let sig = format!("sha256-{}.sig", image.digest.trim_start_matches("sha256:"));
    state.push(repo, &sig);
    state.reset_counts();
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    report(
        "Harbor native: events for a cosign .sig pushed after its image",
        format!("{types:?}"),
        "[\"io.regwatch.signature.added\"]",
    );
    assert_eq!(types, vec!["io.regwatch.signature.added"], "{out}{err}");
    assert_eq!(events[0]["data"]["digest"], image.digest.as_str());
    assert_eq!(state.manifest_requests(), 0, "no HEAD for a signature tag");
    assert_schema_valid(&events);
}

/// A tag moved between two artifact pages onto an artifact already read (Harbor keeps an
/// existing artifact's `push_time`, so nothing shifts and `X-Total-Count` stays) is on neither
/// page. That must not read as a removal: no event from that cycle, and the next one reports
/// the move as one `tag.updated`.
#[tokio::test(flavor = "multi_thread")]
async fn harbor_tag_moved_between_pages_is_not_removed() {
    let (state, setup) = harbor_emitting_removals().await;
    let repo = repo_of(Vendor::Harbor);
    let digest_of = |tag: &str| state.repos.lock().unwrap()[repo][tag].digest.clone();
    // Newest artifact first: t000 is on page 2, t129 on page 1.
    let (old, new) = (digest_of("t000"), digest_of(&format!("t{:03}", TAGS - 1)));
    state.retag(repo, "latest", &old);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "baseline: {err}");

    let moved = new.clone();
    *state.between_pages.lock().unwrap() = Some(Box::new(move |s: &Native| {
        s.retag("proj/team/app", "latest", &moved)
    }));
    let (code, out, err) = setup.regwatch(&["once"]);
    let racing: Vec<String> = json_lines(&out)
        .iter()
        .map(|e| format!("{} {}", e["type"], e["data"]["tag"]))
        .collect();
    report(
        "Harbor native: events from a cycle whose tag moved onto a page already read",
        format!("{racing:?}"),
        "[] (no tag.removed)",
    );
    assert!(racing.is_empty(), "exit {code}: {racing:?}\n{err}");

    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}{err}");
    assert_eq!(events[0]["type"], "io.regwatch.tag.updated");
    assert_eq!(events[0]["data"]["tag"], "latest");
    assert_eq!(events[0]["data"]["previous_digest"], old.as_str());
    assert_eq!(events[0]["data"]["digest"], new.as_str());
}

/// Tags deleted while the Hub API is between two pages: the next page is past the end, which the
/// Hub answers 404 ("Invalid page."). The API did list this repository a page ago, so that is
/// no refusal of it: the daemon must keep listing it natively, and a re-pushed release tag
/// outside `mutable_tags` is then still one `tag.updated` (`tags/list` + HEAD could not see it).
#[tokio::test(flavor = "multi_thread")]
async fn hub_page_gone_mid_listing_is_no_sticky_fallback() {
    let state = Native::new(Vendor::Hub, "robot", "robot-secret");
    let host = serve(state.clone()).await;
    let repo = repo_of(Vendor::Hub);
    for i in 0..TAGS {
        state.push(repo, &format!("t{i:03}"));
    }
    let old = state.push(repo, "v1.2.3");
    let setup = Setup::new(
        "interval = \"1s\"\njitter = \"0%\"",
        &format!(
            "[[registry]]\nname = \"native\"\nkind = \"dockerhub\"\nurl = \"http://{host}\"\nhub_api_url = \"http://{}\"\ninsecure = true\nusername = \"robot\"\npassword = \"robot-secret\"\nrepositories = [\"{repo}\"]\n",
            state.hub_host.lock().unwrap()
        ),
    );
    let daemon = setup.spawn();
    support::wait_ready(&setup.admin).await;
    // The oldest 41 tags go while page 1 is read: 91 are left, one page, and page 2 is gone.
    *state.between_pages.lock().unwrap() = Some(Box::new(|s: &Native| {
        for i in 0..41 {
            s.delete("acme/app", &format!("t{i:03}"));
        }
    }));
    let started = Instant::now();
    while state.between_pages.lock().unwrap().is_some()
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the daemon list once more after the race, then re-push the release tag.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let new = state.push(repo, "v1.2.3");
    let started = Instant::now();
    while daemon.stdout.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, out, err) = daemon.stop();
    let events = json_lines(&out);
    report(
        "Hub native: a page gone mid-listing (404), then a re-pushed v1.2.3: events",
        events.len(),
        "1 tag.updated (still listed natively)",
    );
    assert_eq!(events.len(), 1, "{out}{err}");
    assert_eq!(events[0]["type"], "io.regwatch.tag.updated");
    assert_eq!(events[0]["data"]["previous_digest"], old.digest.as_str());
    assert_eq!(events[0]["data"]["digest"], new.digest.as_str());
    assert!(
        !err.contains("native tag listing refused"),
        "a page gone mid-listing is no refusal: {err}"
    );
}
