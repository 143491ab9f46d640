//! Each provider against real protocol peers, started here:
//! - ACR, Docker Hub and GCR against `docker-registry` with `auth: token`, which verifies the JWTs
//!   that the suite's token server signs (and rejects a wrong or missing token);
//! - GCR's OAuth2 leg against the same server acting as the key's `token_uri`;
//! - ECR against moto's server mode.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use support::moto::{Moto, put_image};
use support::proxy;
use support::synthetic::{Synthetic, serve};
use support::token_server::{Style, TokenServer};
use support::{Auth, Registry, Setup, json_lines, report};

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_enforces_tokens() {
    let tokens = TokenServer::start(&[("sp", "secret")], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("team/app", "v1").await;
    let client = reqwest::Client::new();
    let url = format!("{}/v2/team/app/tags/list", registry.url());
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(&tokens.realm())
    );
    let forged = client
        .get(&url)
        .bearer_auth("eyJhbGciOiJub25lIn0.e30.")
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        401,
        "a token not signed by the trusted key is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_with_an_access_token_only_realm() {
    let tokens =
        TokenServer::start(&[("00000000-sp-id", "sp-password")], Style::AccessTokenOnly).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("svc/api", "v1").await;
    let block = |name: &str, password: &str, repos: &str| {
        format!(
            "[[registry]]\nname = \"{name}\"\nkind = \"acr\"\nurl = \"{}\"\ninsecure = true\nusername = \"00000000-sp-id\"\npassword = \"{password}\"\nrepositories = [{repos}]\npage_size = 1\n\n",
            registry.url()
        )
    };
    let setup = Setup::new(
        "",
        &[
            block("acr", "sp-password", "\"svc/*\""),
            block("acr-bad", "wrong", "\"svc/api\""),
            block("acr-missing", "sp-password", "\"svc/nope\""),
        ]
        .concat(),
    );
    let (code, out, _) = setup.regwatch(&["check"]);
    assert_eq!(code, 1);
    assert!(
        line(&out, "acr").ends_with(" ok (username and password)"),
        "check names the credential source: {out}"
    );
    assert!(
        line(&out, "acr-bad").ends_with("invalid credentials (401/403)"),
        "{out}"
    );
    assert!(line(&out, "acr-missing").ends_with("not found"), "{out}");

    let only_good = Setup::new("", &block("acr", "sp-password", "\"svc/*\""));
    let (code, out, err) = only_good.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let digest = registry.push("svc/api", "v2").await;
    let (code, out, err) = only_good.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["data"]["kind"], "acr");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    assert!(tokens.issued() >= 2 && tokens.refused() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_hub_watching_costs_zero_pulls() {
    let tokens = TokenServer::start(&[("dockerid", "access-token")], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("library/nginx", "1.27").await;
    registry.push("library/nginx", "latest").await;
    registry.push("bitnami/redis", "7").await;
    let (wire, host) = proxy::start(&registry.url()).await;
    let block = |password: &str| {
        format!(
            "[[registry]]\nname = \"hub\"\nkind = \"dockerhub\"\nurl = \"http://{host}\"\ninsecure = true\nusername = \"dockerid\"\npassword = \"{password}\"\nrepositories = [\"nginx\", \"bitnami/redis\"]\nmutable_tags = [\"latest\"]\n"
        )
    };
    let setup = Setup::new("", &block("access-token"));
    let (code, out, err) = setup.regwatch(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let d1 = registry.push("library/nginx", "1.28").await;
    let d2 = registry.push("library/nginx", "latest").await;
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let mut events = json_lines(&out);
    events.sort_by_key(|e| e["data"]["tag"].as_str().unwrap().to_owned());
    assert_eq!(events.len(), 2, "{out}");
    assert_eq!(
        events[0]["data"]["repository"], "library/nginx",
        "single-segment names are official images"
    );
    assert_eq!(
        (
            events[0]["data"]["tag"].as_str(),
            events[0]["data"]["digest"].as_str()
        ),
        (Some("1.28"), Some(d1.as_str()))
    );
    assert_eq!(events[1]["type"], "io.regwatch.tag.updated");
    assert_eq!(events[1]["data"]["digest"], d2.as_str());

    let log = wire.log.lock().unwrap().clone();
    let gets = log
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
        .count();
    let heads = log.iter().filter(|s| s.method == "HEAD").count();
    report(
        "Docker Hub: manifest GETs (pulls) while watching",
        gets,
        "0",
    );
    assert_eq!(gets, 0, "watching must not pull");
    assert!(heads >= 2, "digests came from HEADs ({heads})");

    let bad = Setup::new("", &block("wrong"));
    let (code, out, _) = bad.regwatch(&["check"]);
    assert_eq!(code, 1);
    assert!(out.contains("invalid credentials (401/403)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gcr_service_account_through_oauth2_and_the_token_realm() {
    let tokens = TokenServer::start(&[], Style::Docker).await;
    let registry = Registry::start(Auth::Token {
        realm: tokens.realm(),
        cert: tokens.cert_path.clone(),
    });
    registry.push("my-project/app", "v1").await;
    let dir = tempfile::tempdir().unwrap();
    let account = tokens.service_account(dir.path(), "my-project");
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"gcr\"\nkind = \"gcr\"\nurl = \"{}\"\ninsecure = true\nproject_id = \"my-project\"\njson_key_file = \"{}\"\nrepositories = [\"app\"]\n",
            registry.url(),
            account.path.display()
        ),
    );
    let (code, out, err) = setup.regwatch(&["check"]);
    assert_eq!(
        code,
        0,
        "{out}{err} grants={} refused={} issued={}",
        tokens.google_grants(),
        tokens.refused(),
        tokens.issued()
    );
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let digest = registry.push("my-project/app", "v2").await;
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(
        events[0]["data"]["repository"], "my-project/app",
        "`app` means <project_id>/app"
    );
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    assert!(tokens.google_grants() >= 1, "the service-account flow ran");
    // Listing only reads: the token must not carry cloud-platform (read-write on every API).
    let scopes = tokens.google_scopes();
    let least = "https://www.googleapis.com/auth/devstorage.read_only";
    report(
        "GCR OAuth2 scopes requested",
        scopes
            .join(" ")
            .replace("https://www.googleapis.com/auth/", ""),
        "devstorage.read_only",
    );
    assert!(
        !scopes.is_empty() && scopes.iter().all(|s| s == least),
        "{scopes:?}"
    );

    // A key the token_uri does not know is refused there, and check says so.
    let stranger = TokenServer::start(&[], Style::Docker)
        .await
        .service_account(dir.path(), "my-project");
    std::fs::write(&account.path, stranger.json).unwrap();
    let (code, out, _) = setup.regwatch(&["check"]);
    assert_eq!(code, 1);
    assert!(out.contains("invalid credentials (401/403)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gcr_listing_takes_digests_and_push_times_from_the_manifest_map() {
    // Google's tags/list carries a digest → {tag, timeUploadedMs} map; no HEAD is needed.
    let state = Arc::new(Synthetic::default());
    state.put("my-project/app", "v1", 0);
    *state.google_manifest.lock().unwrap() = true;
    let host = serve(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(&[], Style::Docker).await;
    let account = tokens.service_account(dir.path(), "my-project");
    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"gcr\"\nkind = \"gcr\"\nurl = \"http://{host}\"\ninsecure = true\nproject_id = \"my-project\"\njson_key_file = \"{}\"\nrepositories = [\"app\"]\nmutable_tags = [\"v1\"]\n",
            account.path.display()
        ),
    );
    let (code, _, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let digest = state.put("my-project/app", "v2", 0);
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["data"]["digest"], digest.as_str());
    assert!(
        events[0]["data"]["pushed_at"].as_str().is_some(),
        "GCR events carry pushed_at: {out}"
    );
    assert_eq!(
        state.head_requests.load(Ordering::Relaxed),
        0,
        "no HEADs, not even for mutable tags"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_through_the_api_with_digests_and_push_times() {
    let moto = Moto::start();
    let client = moto.ecr_setup_client().await;
    for repo in ["team/api", "team/web", "other/x"] {
        client
            .create_repository()
            .repository_name(repo)
            .send()
            .await
            .unwrap();
    }
    put_image(&client, "team/api", "v1").await;
    put_image(&client, "team/web", "v1").await;

    let setup = Setup::new(
        "",
        &format!(
            "[[registry]]\nname = \"ecr\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.us-east-1.amazonaws.com\"\nendpoint = \"{}\"\ninsecure = true\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nrepositories = [\"team/*\"]\n",
            moto.url
        ),
    );
    let (code, out, err) = setup.regwatch(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = setup.regwatch(&["repos", "ecr"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["team/api", "team/web"]
    );
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    let digest = put_image(&client, "team/api", "v2").await;
    let (code, out, err) = setup.regwatch(&["once"]);
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out}");
    let data = &events[0]["data"];
    assert_eq!(data["kind"], "ecr");
    assert_eq!(data["host"], "123456789012.dkr.ecr.us-east-1.amazonaws.com");
    assert_eq!(data["repository"], "team/api");
    assert_eq!(data["digest"], digest.as_str());
    assert!(
        data["pushed_at"].as_str().is_some(),
        "ECR events carry pushed_at: {out}"
    );

    let (code, out, err) = setup.regwatch(&["tags", "ecr", "team/api", "--json"]);
    assert_eq!(code, 0, "{err}");
    let tags: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tags.as_array().unwrap().len(), 2);
    assert!(tags[0]["pushed_at"].as_str().is_some());

    // Keys AWS does not know: check says invalid credentials and fails.
    let strict = Moto::start_with_auth(true);
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace(&moto.url, &strict.url);
    std::fs::write(&setup.config, text).unwrap();
    let (code, out, err) = setup.regwatch(&["check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("invalid credentials (401/403)"), "{out}");
}
