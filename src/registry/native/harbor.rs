//! Harbor's v2.0 API, operation `listArtifacts` (goharbor/harbor api/v2.0/swagger.yaml):
//! `GET /api/v2.0/projects/{project_name}/repositories/{repository_name}/artifacts` with
//! `with_tag=true`, `page` ("The page number", default 1) and `page_size` ("default 10, maximum
//! 100"). The repository name is the path below the project, and "If it contains slash, encode it
//! twice over with URL encoding. e.g. a/b -> a%2Fb -> a%252Fb". The answer is an array of
//! `Artifact` (`digest`: "The digest of the artifact", `push_time`, `tags`: `Tag` with `name` and
//! `push_time`: "The push time of the tag"), with headers `X-Total-Count` ("The total count of
//! artifacts") and `Link` ("Link refers to the previous page and next page"). The API's security
//! is `basic` (or none, for public projects).
//!
//! Pages are numbered, so a push between two pages shifts the artifacts under the reader: the
//! listing is accepted only when every page reports the same total and that many distinct
//! artifacts were read; otherwise it fails and the next cycle lists again.
//!
//! The artifact pages give digests and push times, not the complete set of tag names: the
//! artifact DAO leaves accessories out of every listing and count (`setAccessoryQuery`), and a
//! cosign `sha256-<hex>.sig` signature, or any manifest with a `subject`, is one, so its tags are
//! on no page; and a tag moved between two pages onto an artifact already read (an existing
//! artifact keeps its `push_time`, so nothing shifts and the total stays) is on neither. The names
//! therefore come from `tags/list` (Harbor's tag table, every tag): one more request per cycle, and
//! a tag the pages did not show keeps its last known digest, or gets a `HEAD` where one is due.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;

use super::super::auth::{Credential, CredentialSource, basic, sensitive};
use super::super::http::{BODY_CAP, expect_json, read_body};
use super::super::oci::{OciRegistry, next_link};
use super::super::pager::Pages;
use super::super::{Registry, RegistryError, Tag, valid_digest, valid_tag};
use super::{failed_status, get_json, parse_time};

/// Harbor's largest `page_size`.
const PAGE_SIZE: u32 = 100;

#[derive(Deserialize)]
struct Artifact {
    digest: String,
    push_time: Option<String>,
    #[serde(default)]
    tags: Option<Vec<HarborTag>>,
}

#[derive(Deserialize)]
struct HarborTag {
    name: String,
    push_time: Option<String>,
}

/// Harbor's artifact listing, with the registry's credentials.
pub struct Harbor {
    credentials: Option<Arc<dyn CredentialSource>>,
}

impl Harbor {
    /// Lists with `credentials` (sent as Basic), or anonymously.
    pub fn new(credentials: Option<Arc<dyn CredentialSource>>) -> Self {
        Harbor { credentials }
    }

    /// Every tag of `repo` (`project/name…`), with its artifact's digest and the tag's push time;
    /// `None` for a name without a project.
    pub async fn list(
        &self,
        oci: &OciRegistry,
        repo: &str,
    ) -> Result<Option<Vec<Tag>>, RegistryError> {
        let Some((project, rest)) = repo.split_once('/') else {
            return Ok(None);
        };
        let authorization = match &self.credentials {
            Some(c) => match c.credential().await? {
                Credential::Basic(c) => Some(sensitive(&basic(&c))),
                // A refresh token is no Harbor API credential: ask anonymously, which works for
                // public projects and is refused (then the Distribution path) for the rest.
                Credential::RefreshToken(_) | Credential::Anonymous => None,
            },
            None => None,
        };
        // `set_path` keeps `%25`, so Harbor receives the name encoded twice, as it wants.
        let mut url = oci.endpoint(&format!(
            "/api/v2.0/projects/{project}/repositories/{}/artifacts",
            rest.replace('/', "%252F")
        ));
        url.query_pairs_mut()
            .append_pair("with_tag", "true")
            .append_pair("page", "1")
            .append_pair("page_size", &PAGE_SIZE.to_string());

        let transport = oci.transport();
        let mut tags: Vec<Tag> = Vec::new();
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        let mut total: Option<u64> = None;
        let mut pages = Pages::new(oci.base(), format!("{repo}: Harbor's artifact pages"));
        let mut next = Some(url);
        while let Some(url) = next.take() {
            pages.admit(&url)?;
            let response = get_json(transport, &url, authorization.as_ref())
                .await
                .map_err(|e| pages.failed(e))?;
            let status = response.status();
            if !status.is_success() {
                let what = format!("Harbor artifacts of {repo}");
                return Err(pages.failed(failed_status(status, repo, "Harbor API", what)));
            }
            let page_total = response
                .headers()
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    RegistryError::Protocol(format!("{repo}: Harbor page without X-Total-Count"))
                })?;
            if total.is_some_and(|t| t != page_total) {
                return Err(RegistryError::Protocol(format!(
                    "{repo}: artifacts changed while they were paged; listing again next cycle"
                )));
            }
            total = Some(page_total);
            let link = next_link(&response, &url, &pages)?;
            expect_json(&response)?;
            let body = read_body(response, BODY_CAP).await?;
            let page: Vec<Artifact> = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Protocol(format!("{repo}: invalid Harbor artifacts page: {e}"))
            })?;
            for artifact in page {
                // A malformed digest is confined to its tags: they are listed without one, and
                // the digest lookup decides where it matters.
                let digest = valid_digest(&artifact.digest).then(|| artifact.digest.clone());
                if !digests.insert(artifact.digest.clone()) {
                    return Err(RegistryError::Protocol(format!(
                        "{repo}: artifacts changed while they were paged; listing again next cycle"
                    )));
                }
                for tag in artifact.tags.unwrap_or_default() {
                    if !valid_tag(&tag.name) || !names.insert(tag.name.clone()) {
                        return Err(RegistryError::Protocol(format!(
                            "{repo}: Harbor lists tag {:?} twice or malformed",
                            tag.name
                        )));
                    }
                    let pushed_at = tag
                        .push_time
                        .as_deref()
                        .or(artifact.push_time.as_deref())
                        .and_then(parse_time);
                    tags.push(Tag {
                        name: tag.name,
                        digest: digest.clone(),
                        pushed_at,
                    });
                }
            }
            next = link;
        }
        if total.is_some_and(|t| t != digests.len() as u64) {
            return Err(RegistryError::Protocol(format!(
                "{repo}: Harbor counted {} artifacts but listed {}; listing again next cycle",
                total.unwrap_or_default(),
                digests.len()
            )));
        }
        // Every tag name, including those no artifact page shows (see the module doc).
        for tag in oci.list_tags(repo).await? {
            if !names.contains(&tag.name) {
                tags.push(tag);
            }
        }
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(tags))
    }
}
