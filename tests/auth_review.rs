//! Review of the auth core.
//!
//! An OAuth2 refresh token (ACR's exchanged token, a docker config's
//! `identitytoken`) is POSTed as a form to the token realm (Docker token spec, "OAuth2 token"
//! flow). A realm that answers 307/308 must not carry that body to another origin: HTTP clients
//! re-send a 307/308's body as is and strip only the `Authorization` header across hosts, so
//! the secret in the form would reach whatever the `Location` names.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use regwatch::registry::auth::{Credential, CredentialSource};
use regwatch::registry::oci::OciRegistry;
use regwatch::registry::{Registry, RegistryError};

const REFRESH: &str = "canary-refresh-redirect-6a1e";

/// The credential under test: a fixed refresh token, as a docker config's `identitytoken` is.
struct Refresh;

#[async_trait]
impl CredentialSource for Refresh {
    async fn credential(&self) -> Result<Credential, RegistryError> {
        Ok(Credential::RefreshToken(REFRESH.to_owned().into()))
    }
    fn describe(&self) -> String {
        "refresh token".into()
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_realm_redirect_does_not_carry_the_refresh_token_elsewhere() {
    // Another origin, which records whatever reaches it.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let elsewhere = serve(Router::new().fallback(any(move |body: Bytes| {
        let record = record.clone();
        async move {
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            StatusCode::NOT_FOUND
        }
    })))
    .await;
    // The registry challenges for Bearer at its own realm, which answers 307 to the other origin.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{registry}/token");
    let target = format!("http://{elsewhere}/collect");
    let app = Router::new()
        .route(
            "/token",
            post(move || {
                let target = target.clone();
                async move { (StatusCode::TEMPORARY_REDIRECT, [("location", target)]) }
            }),
        )
        .route(
            "/v2/{*rest}",
            get(move || {
                let realm = realm.clone();
                async move {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(
                            "www-authenticate",
                            format!("Bearer realm=\"{realm}\",service=\"test\""),
                        )],
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = regwatch::config::parse(&format!(
        "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{registry}\"\ninsecure = true\nrepositories = [\"team/app\"]\n"
    ))
    .unwrap();
    let client =
        OciRegistry::with_credentials(&config.registries[0], Some(Arc::new(Refresh))).unwrap();
    let result = client.list_tags("team/app").await;
    let leaked = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.contains(REFRESH))
        .count();
    assert_eq!(leaked, 0, "the refresh token reached another origin");
    assert!(result.is_err(), "{result:?}");
}

mod support;

/// A registry token the registry refused with 403 was kept in the per-scope cache and presented
/// again on every request until it expired, so `refused()` (the credential source minting anew)
/// could not take effect: the registry's refusal must drop the token it refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_token_refused_with_403_is_not_presented_again() {
    use support::synthetic::{Synthetic, serve};
    let synthetic = Arc::new(Synthetic::default());
    synthetic.put("team/app", "v1", 1);
    *synthetic.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "t1".into()));
    synthetic.forbidden_tokens.lock().unwrap().push("t1".into());
    let url = serve(synthetic.clone()).await;
    let config = regwatch::config::parse(&format!(
        "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{url}\"\ninsecure = true\nusername = \"u\"\npassword = \"p\"\nrepositories = [\"team/app\"]\n"
    ))
    .unwrap();
    let client = OciRegistry::new(&config.registries[0]).unwrap();
    let first = client.list_tags("team/app").await;
    assert!(
        matches!(first, Err(RegistryError::Unauthorized { status: 403, .. })),
        "{first:?}"
    );
    // The realm now issues a token the registry accepts (the identity was granted access).
    *synthetic.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "t2".into()));
    let second = client.list_tags("team/app").await;
    let refused_again = synthetic
        .authorization_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.as_deref() == Some("Bearer t1"))
        .count();
    support::report(
        "registry 403 on a token: times the refused token was presented",
        refused_again,
        "1",
    );
    assert_eq!(refused_again, 1, "{second:?}");
    assert_eq!(second.unwrap().len(), 1);
}

/// Eight HEADs of one repository that find its scope's token missing at the same moment (a
/// cycle's digests, once the token is due) must share one realm call: each fetched its own.
#[tokio::test(flavor = "multi_thread")]
async fn eight_heads_that_find_the_token_missing_share_one_realm_call() {
    use std::sync::atomic::Ordering;
    use support::synthetic::{Synthetic, serve};
    let synthetic = Arc::new(Synthetic::default());
    for i in 0..8 {
        synthetic.put("team/app", &format!("v{i}"), i);
    }
    *synthetic.token_auth.lock().unwrap() = Some(("u".into(), "p".into(), "t".into()));
    let url = serve(synthetic.clone()).await;
    let config = regwatch::config::parse(&format!(
        "[[registry]]\nname = \"r\"\nkind = \"oci\"\nurl = \"http://{url}\"\ninsecure = true\nusername = \"u\"\npassword = \"p\"\nrepositories = [\"team/app\"]\n"
    ))
    .unwrap();
    let client = Arc::new(OciRegistry::new(&config.registries[0]).unwrap());
    // The catalog learns the challenge; team/app's scope has no token yet. The realm then takes
    // 200 ms, so the eight HEADs surely find the scope's token missing together.
    client.list_repositories().await.unwrap();
    *synthetic.token_delay.lock().unwrap() = Some(std::time::Duration::from_millis(200));
    let before = synthetic.token_requests.load(Ordering::Relaxed);
    let heads: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.digest("team/app", &format!("v{i}")).await })
        })
        .collect();
    for head in heads {
        head.await.unwrap().unwrap();
    }
    let fetched = synthetic.token_requests.load(Ordering::Relaxed) - before;
    support::report(
        "registry token: realm calls for 8 concurrent HEADs of one scope",
        fetched,
        "1",
    );
    assert_eq!(fetched, 1, "one token fetch for the scope");
}
