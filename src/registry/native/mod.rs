//! Registry-native tag listings: where a registry's own API returns each tag's digest and push
//! time with the listing, one request per page replaces `tags/list` plus a `HEAD` per new or
//! mutable tag, and every tag's digest move is seen (not only `mutable_tags`'):
//! - ACR: `GET /acr/v1/<repo>/_tags` ([`acr`]);
//! - Harbor: `GET /api/v2.0/projects/<p>/repositories/<r>/artifacts?with_tag=true` ([`harbor`]);
//! - Docker Hub: `GET <hub API>/v2/namespaces/<ns>/repositories/<r>/tags` ([`hub`]), which
//!   counts no pull.
//!
//! The Distribution path stays the fallback. When the native API refuses a repository (401, 403,
//! 404, 405, 501: no permission for it, or not this vendor's registry) and `tags/list` then lists
//! it, the adapter logs it once and uses `tags/list` + `HEAD` for that repository until the
//! adapter is rebuilt (a restart, or a reload that changes the registry's entry), when the native
//! API is asked again: a permission granted meanwhile is then used, and no cycle pays a refused
//! request before its listing. A repository that neither API finds is `NotFound`, and nothing is
//! remembered.
//!
//! A native listing is complete or an error, like the Distribution one: every page is read, a
//! malformed page is a protocol error, and a next link to another origin is refused.

pub mod acr;
pub mod harbor;
pub mod hub;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::oci::OciRegistry;
use super::{Registry, RegistryError, Tag};

/// The native API an adapter lists through.
pub enum Api {
    /// ACR's `_tags`, on the registry's origin, with its bearer tokens.
    Acr,
    /// Harbor's artifact listing, on the registry's origin, with Basic auth.
    Harbor(harbor::Harbor),
    /// Docker Hub's API, on its own origin, with its own JWT.
    Hub(hub::Hub),
}

/// A Distribution registry whose tags are listed through its native API where it answers.
pub struct NativeRegistry {
    oci: OciRegistry,
    api: Api,
    /// Repositories whose native listing was refused: listed through `tags/list` from then on.
    refused: Mutex<HashSet<String>>,
    name: String,
}

impl NativeRegistry {
    /// Wraps the Distribution client `oci` of registry `name` with its native listing `api`.
    pub fn new(name: &str, oci: OciRegistry, api: Api) -> Self {
        NativeRegistry {
            oci,
            api,
            refused: Mutex::new(HashSet::new()),
            name: name.to_owned(),
        }
    }

    /// The native listing of `repo`; `None` when the API cannot name it (a Hub name that is
    /// not `namespace/repository`).
    async fn native(&self, repo: &str) -> Result<Option<Vec<Tag>>, RegistryError> {
        match &self.api {
            Api::Acr => acr::list(&self.oci, repo).await.map(Some),
            Api::Harbor(h) => h.list(&self.oci, repo).await,
            Api::Hub(h) => h.list(self.oci.transport(), repo).await,
        }
    }

    fn is_refused(&self, repo: &str) -> bool {
        self.refused.lock().expect("refused lock").contains(repo)
    }
}

/// Whether a native API's answer means "not here, not for you": the Distribution API may still
/// list the repository. Anything else (a 5xx, a timeout, a malformed page) fails the listing, as
/// it would on the Distribution path.
fn refusal(e: &RegistryError) -> bool {
    match e {
        RegistryError::Unauthorized { .. } | RegistryError::NotFound(_) => true,
        RegistryError::Status { status, .. } => matches!(status, 400 | 405 | 501),
        _ => false,
    }
}

/// GETs the native API page `url` as JSON, with `authorization` if there is one.
async fn get_json(
    transport: &super::http::Transport,
    url: &url::Url,
    authorization: Option<&reqwest::header::HeaderValue>,
) -> Result<reqwest::Response, RegistryError> {
    use reqwest::header;
    transport
        .send(|| {
            let mut req = transport.client().get(url.clone());
            if let Some(a) = authorization {
                req = req.header(header::AUTHORIZATION, a.clone());
            }
            req.header(header::ACCEPT, "application/json")
        })
        .await
}

/// The error for a native API's unsuccessful `status` on `repo`: 401/403 refuse `api`, 404 is
/// the repository not found, anything else is `what` failing with that status.
fn failed_status(
    status: reqwest::StatusCode,
    repo: &str,
    api: &'static str,
    what: String,
) -> RegistryError {
    match status {
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
            RegistryError::Unauthorized {
                status: status.as_u16(),
                what: api,
            }
        }
        reqwest::StatusCode::NOT_FOUND => RegistryError::NotFound(repo.to_owned()),
        _ => RegistryError::Status {
            status: status.as_u16(),
            what,
        },
    }
}

#[async_trait]
impl Registry for NativeRegistry {
    fn credential_source(&self) -> Option<String> {
        self.oci.credential_source()
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        self.oci.ping().await
    }

    async fn list_repositories(&self) -> Result<Vec<String>, RegistryError> {
        self.oci.list_repositories().await
    }

    async fn list_tags(&self, repo: &str) -> Result<Vec<Tag>, RegistryError> {
        if !self.is_refused(repo) {
            match self.native(repo).await {
                Ok(Some(tags)) => return Ok(tags),
                Ok(None) => {}
                Err(e) if refusal(&e) => {
                    // A repository neither API finds is NotFound, and says nothing of the API.
                    let tags = self.oci.list_tags(repo).await?;
                    if self
                        .refused
                        .lock()
                        .expect("refused lock")
                        .insert(repo.to_owned())
                    {
                        tracing::warn!(
                            registry = %self.name,
                            repository = repo,
                            reason = %e,
                            "the registry's native tag listing refused this repository; \
                             listing it through tags/list and HEAD until a restart or a reload \
                             that changes this registry"
                        );
                    }
                    return Ok(tags);
                }
                Err(e) => return Err(e),
            }
        }
        self.oci.list_tags(repo).await
    }

    async fn digest(&self, repo: &str, tag: &str) -> Result<String, RegistryError> {
        self.oci.digest(repo, tag).await
    }

    async fn platforms(&self, repo: &str, digest: &str) -> Result<Vec<String>, RegistryError> {
        self.oci.platforms(repo, digest).await
    }
}

/// Parses an RFC 3339 time as the vendors write it: `2018-09-06T06:17:21.0856539Z` (ACR),
/// `2021-01-05T21:06:53.506400Z` (Hub), `2024-05-01T10:00:00.000Z` or with an offset (Harbor).
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(local).ok();
    }
    // `±HH:MM` after the seconds: the local time, moved back by the offset.
    let cut = text.len().checked_sub(6)?;
    if !text.is_char_boundary(cut) {
        return None;
    }
    let (local, offset) = text.split_at(cut);
    let sign = match offset.as_bytes()[0] {
        b'+' => 1i64,
        b'-' => -1,
        _ => return humantime::parse_rfc3339_weak(text).ok(),
    };
    let (h, m) = offset[1..].split_once(':')?;
    let seconds = sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60);
    let at = humantime::parse_rfc3339_weak(local).ok()?;
    if seconds >= 0 {
        at.checked_sub(Duration::from_secs(seconds as u64))
    } else {
        at.checked_add(Duration::from_secs(seconds.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_times_parse() {
        let at = |s: &str| humantime::format_rfc3339_seconds(parse_time(s).unwrap()).to_string();
        assert_eq!(at("2018-09-06T06:17:21.0856539Z"), "2018-09-06T06:17:21Z");
        assert_eq!(at("2021-01-05T21:06:53.506400Z"), "2021-01-05T21:06:53Z");
        assert_eq!(at("2024-05-01T10:00:00.000+02:00"), "2024-05-01T08:00:00Z");
        assert_eq!(at("2024-05-01T10:00:00-01:30"), "2024-05-01T11:30:00Z");
        assert!(parse_time("yesterday").is_none());
        assert!(parse_time("").is_none());
        assert!(parse_time("2024é12345").is_none(), "no panic");
    }

    #[test]
    fn refusals_fall_back_and_failures_do_not() {
        assert!(refusal(&RegistryError::NotFound("x".into())));
        assert!(refusal(&RegistryError::Unauthorized {
            status: 403,
            what: "registry"
        }));
        assert!(!refusal(&RegistryError::Protocol("bad page".into())));
        assert!(!refusal(&RegistryError::Status {
            status: 503,
            what: "x".into()
        }));
        assert!(!refusal(&RegistryError::Unreachable("timed out".into())));
    }
}
