//! Docker Hub's own API (docs.docker.com/reference/api/hub/latest), operation "List repository
//! tags": `GET /v2/namespaces/{namespace}/repositories/{repository}/tags` with `page` ("Page
//! number to get. Defaults to 1") and `page_size` ("Defaults to 10. Max of 100"), answering
//! `paginated_tags`: `{"count", "next", "previous", "results": [tag]}`, where a `tag` has `name`,
//! `digest`, `last_updated` ("datetime of last update") and `tag_last_pushed`. Listing tags there
//! counts no pull, unlike a manifest request at the registry.
//!
//! Public repositories need no credentials. With a Docker ID, "Create access token" (`POST
//! /v2/auth/token` with `{"identifier", "secret"}`, the password or a personal access token)
//! answers `{"access_token"}`, a JWT that "expires in 10 minutes", used as `Authorization:
//! Bearer`. It lives in a [`CredentialCache`]: renewed shortly before it expires, and dropped
//! when the API refuses it, unless it is so young that a new login would be refused the same.
//!
//! Pages are numbered (and ordered by last update), so a push between two pages shifts tags under
//! the reader: the listing is accepted only when every page reports the same `count` and that
//! many distinct tags were read; otherwise it fails and the next cycle lists again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::super::auth::{Credential, CredentialSource, jwt_lifetime, sensitive};
use super::super::credential_cache::CredentialCache;
use super::super::http::{BODY_CAP, Transport, expect_json, read_body};
use super::super::pager::Pages;
use super::super::{RegistryError, Tag, valid_digest, valid_tag};
use super::{failed_status, get_json, parse_time};

/// The Hub API's largest `page_size`.
const PAGE_SIZE: u32 = 100;
/// A listing needing more pages than this is refused as runaway (1 M tags).
/// The documented lifetime of an access token, when it carries no readable `exp`.
const TOKEN_LIFETIME: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
struct Page {
    count: u64,
    next: Option<String>,
    results: Vec<HubTag>,
}

#[derive(Deserialize)]
struct HubTag {
    name: String,
    digest: Option<String>,
    tag_last_pushed: Option<String>,
    last_updated: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
}

/// The Hub API at `api`, with the entry's Docker ID.
pub struct Hub {
    api: Url,
    credentials: Option<Arc<dyn CredentialSource>>,
    /// The access token; `None` when the credentials are no Docker ID and password.
    token: CredentialCache<(), Option<SecretString>>,
}

impl Hub {
    /// The API at `api` (`hub_api_url`), logging in with `credentials` when they are a Docker ID
    /// and password or token.
    pub fn new(api: Url, credentials: Option<Arc<dyn CredentialSource>>) -> Self {
        Hub {
            api,
            credentials,
            token: CredentialCache::new(),
        }
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.api.clone();
        url.set_path(&format!("{}{path}", self.api.path().trim_end_matches('/')));
        url
    }

    /// The `Authorization` value: a cached or fresh access token, or `None` when anonymous.
    async fn authorization(
        &self,
        transport: &Transport,
    ) -> Result<Option<header::HeaderValue>, RegistryError> {
        let Some(source) = &self.credentials else {
            return Ok(None);
        };
        let token = self
            .token
            .get(&(), || self.login(transport, source.as_ref()))
            .await?;
        Ok(token.as_ref().map(bearer))
    }

    /// "Create access token" with the Docker ID and password: the token and its lifetime.
    async fn login(
        &self,
        transport: &Transport,
        source: &dyn CredentialSource,
    ) -> Result<(Option<SecretString>, Duration), RegistryError> {
        let Credential::Basic(c) = source.credential().await? else {
            // A refresh token (a docker config's `identitytoken`) logs in nowhere here; a zero
            // lifetime asks the source again next time.
            return Ok((None, Duration::ZERO));
        };
        let body = serde_json::json!({
            "identifier": c.username,
            "secret": c.password.expose_secret(),
        })
        .to_string();
        let url = self.endpoint("/v2/auth/token");
        let response = transport
            .send(|| {
                // Not redirected: a 307/308 would re-send the password to its `Location`.
                transport
                    .no_redirect_client()
                    .post(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::ACCEPT, "application/json")
                    .body(body.clone())
            })
            .await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            source.refused();
            return Err(RegistryError::Unauthorized {
                status: status.as_u16(),
                what: "Docker Hub login",
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                status: status.as_u16(),
                what: "Docker Hub login".into(),
            });
        }
        expect_json(&response)?;
        let answer: TokenAnswer = serde_json::from_slice(&read_body(response, 64 * 1024).await?)
            .map_err(|e| RegistryError::Protocol(format!("Docker Hub login answer: {e}")))?;
        let value = answer
            .access_token
            .filter(|t| !t.is_empty() && t.bytes().all(|b| (0x21..0x7f).contains(&b)))
            .ok_or_else(|| {
                RegistryError::Protocol("Docker Hub login gave no access_token".into())
            })?;
        let lifetime = jwt_lifetime(&value).unwrap_or(TOKEN_LIFETIME);
        Ok((Some(value.into()), lifetime))
    }

    /// Every tag of `repo` (`namespace/repository`) with its digest where the Hub has one, and
    /// its last push; `None` for a name the Hub API cannot address.
    pub async fn list(
        &self,
        transport: &Transport,
        repo: &str,
    ) -> Result<Option<Vec<Tag>>, RegistryError> {
        let Some((namespace, name)) = repo.split_once('/').filter(|(_, n)| !n.contains('/')) else {
            return Ok(None);
        };
        let mut url = self.endpoint(&format!(
            "/v2/namespaces/{namespace}/repositories/{name}/tags"
        ));
        url.query_pairs_mut()
            .append_pair("page_size", &PAGE_SIZE.to_string());
        let mut tags: Vec<Tag> = Vec::new();
        let mut names = HashSet::new();
        let mut count: Option<u64> = None;
        let mut pages = Pages::new(&self.api, format!("{repo}: Docker Hub's tag pages"));
        let mut next = Some(url);
        while let Some(url) = next.take() {
            pages.admit(&url)?;
            let page = self
                .page(transport, &url, repo)
                .await
                .map_err(|e| pages.failed(e))?;
            if count.is_some_and(|c| c != page.count) {
                return Err(RegistryError::Protocol(format!(
                    "{repo}: tags changed while they were paged; listing again next cycle"
                )));
            }
            count = Some(page.count);
            for t in page.results {
                if !valid_tag(&t.name) {
                    return Err(RegistryError::Protocol(format!(
                        "{repo}: Docker Hub lists an invalid tag {:?}",
                        t.name
                    )));
                }
                if !names.insert(t.name.clone()) {
                    return Err(RegistryError::Protocol(format!(
                        "{repo}: tags changed while they were paged; listing again next cycle"
                    )));
                }
                // Old (schema 1) tags have no digest, and a malformed one is confined to its
                // tag: a HEAD resolves those, where needed.
                let digest = match t.digest.filter(|d| !d.is_empty()) {
                    Some(d) if valid_digest(&d) => Some(d),
                    _ => None,
                };
                let pushed_at = t
                    .tag_last_pushed
                    .or(t.last_updated)
                    .as_deref()
                    .and_then(parse_time);
                tags.push(Tag {
                    name: t.name,
                    digest,
                    pushed_at,
                });
            }
            next = page
                .next
                .filter(|n| !n.is_empty())
                .map(|n| pages.resolve(&url, &n))
                .transpose()?;
        }
        if count.is_some_and(|c| c != tags.len() as u64) {
            return Err(RegistryError::Protocol(format!(
                "{repo}: Docker Hub counted {} tags but listed {}; listing again next cycle",
                count.unwrap_or_default(),
                tags.len()
            )));
        }
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(tags))
    }

    /// One page, with one fresh login if the API refuses a token older than the refusal grace.
    async fn page(
        &self,
        transport: &Transport,
        url: &Url,
        repo: &str,
    ) -> Result<Page, RegistryError> {
        for attempt in 0..2 {
            let authorization = self.authorization(transport).await?;
            let response = get_json(transport, url, authorization.as_ref()).await?;
            match response.status() {
                s if s.is_success() => {
                    expect_json(&response)?;
                    let body = read_body(response, BODY_CAP).await?;
                    return serde_json::from_slice(&body).map_err(|e| {
                        RegistryError::Protocol(format!(
                            "{repo}: invalid Docker Hub tags page: {e}"
                        ))
                    });
                }
                // A token minted moments ago was refused for the Docker ID it names, which a new
                // login shares: only an older one is worth replacing.
                StatusCode::UNAUTHORIZED
                    if attempt == 0 && authorization.is_some() && self.token.refused(&()) => {}
                s => {
                    let what = format!("Docker Hub tags of {repo}");
                    return Err(failed_status(s, repo, "Docker Hub API", what));
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

fn bearer(token: &SecretString) -> header::HeaderValue {
    sensitive(&SecretString::from(format!(
        "Bearer {}",
        token.expose_secret()
    )))
}
