//! The OCI Distribution v2 client: ping, `_catalog` and `tags/list` pagination, and HEAD digests.
//! Harbor and ACR speak it as is.

use async_trait::async_trait;
use reqwest::header;
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use std::sync::Arc;

use super::auth::{Authenticator, CredentialSource, sensitive};
use super::http::{BODY_CAP, Transport, expect_json, read_body};
use super::pager::Pages;
use super::{Registry, RegistryError, Tag, valid_digest, valid_repository, valid_tag};
use crate::config::RegistryConfig;

/// A listing needing more pages than this is refused as runaway (10 M tags at n=1000).
/// The manifest types a HEAD accepts, so the registry reports the digest it would serve.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest or image config `platforms` reads: the Distribution registry refuses
/// manifests over 4 MiB, and an image config is a few kilobytes.
const MANIFEST_CAP: usize = 4 * 1024 * 1024;
/// The config media types of container images (OCI image-spec config.md; Docker image manifest
/// v2 schema 2). Any other config is an artifact's (Helm chart, cosign signature): no platform.
const IMAGE_CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Reads one listing page: its names, plus any tags whose digests the page carries.
pub(crate) type PageParser = fn(&[u8], &mut Vec<Tag>) -> Result<Vec<String>, serde_json::Error>;

/// A Distribution v2 registry.
pub struct OciRegistry {
    base: Url,
    transport: Transport,
    auth: Authenticator,
    page_size: u32,
}

#[derive(Deserialize)]
struct TagsPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// Google's extension: digest → the tags on it and its upload time.
    #[serde(default)]
    manifest: Option<std::collections::HashMap<String, GoogleManifest>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoogleManifest {
    #[serde(default)]
    tag: Vec<String>,
    time_uploaded_ms: Option<String>,
}

/// The fields of an image index / manifest list (`manifests`) or an image manifest (`config`)
/// that say which platforms it runs on.
#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<ConfigDescriptor>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDescriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    /// The blob's size in bytes, which the (verified) manifest vouches for.
    #[serde(default)]
    size: Option<u64>,
}

/// An index entry's `platform`, or the same fields at the top of an image config.
#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// The most platforms one image reports, and the longest `os`, `architecture` or `variant`
/// read. Real ones are Go's `GOOS`/`GOARCH` names and `v7`-style variants, a few dozen at most;
/// past these bounds an index (up to 4 MiB of free strings) could make an event larger than a
/// Kafka message may be (1 MB by default), which would hold back the whole outbox.
const MAX_PLATFORMS: usize = 64;
const MAX_PLATFORM_PART: usize = 64;

impl Platform {
    /// `os/arch[/variant]`; `None` for buildx's attestation manifests (`unknown/unknown`),
    /// configs that name no platform, and names no platform has (a part too long, or with
    /// characters other than ASCII letters, digits, `.`, `_` and `-`).
    fn name(&self) -> Option<String> {
        let (os, arch) = (self.os.as_str(), self.architecture.as_str());
        if os.is_empty() || arch.is_empty() || (os, arch) == ("unknown", "unknown") {
            return None;
        }
        let plausible = |part: &str| {
            part.len() <= MAX_PLATFORM_PART
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !plausible(os) || !plausible(arch) || !self.variant.as_deref().is_none_or(plausible) {
            return None;
        }
        Some(match self.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        })
    }
}

/// Where a manifest's platforms are.
#[derive(Debug, PartialEq, Eq)]
enum Platforms {
    /// An index or manifest list names them.
    Listed(Vec<String>),
    /// A single image: in its config blob, at this digest, of this size if the manifest says.
    InConfig(String, Option<u64>),
    /// Neither (an artifact, not an image).
    None,
}

/// Reads where the platforms of a manifest `body` are.
fn manifest_platforms(body: &[u8]) -> Result<Platforms, serde_json::Error> {
    let doc: ManifestDoc = serde_json::from_slice(body)?;
    Ok(match (doc.manifests, doc.config) {
        (Some(entries), _) => Platforms::Listed(
            entries
                .iter()
                .filter_map(|e| e.platform.as_ref()?.name())
                .collect(),
        ),
        (None, Some(c))
            if c.media_type
                .as_deref()
                .is_none_or(|t| IMAGE_CONFIG_TYPES.contains(&t)) =>
        {
            Platforms::InConfig(c.digest, c.size)
        }
        (None, _) => Platforms::None,
    })
}

/// Whether `body` hashes to `digest`: what a registry serves by digest must be that content, or
/// a platform list stored once per digest could describe another image.
fn matches_digest(body: &[u8], digest: &str) -> bool {
    use sha2::Digest as _;
    match digest.split_once(':') {
        Some(("sha256", hex)) => hex::encode(sha2::Sha256::digest(body)).eq_ignore_ascii_case(hex),
        Some(("sha512", hex)) => hex::encode(sha2::Sha512::digest(body)).eq_ignore_ascii_case(hex),
        _ => false,
    }
}

#[derive(Deserialize)]
struct CatalogPage {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

impl OciRegistry {
    /// A client for one registry entry, with its configured username and password.
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let credentials = config
            .credentials
            .clone()
            .map(|c| Arc::new(c) as Arc<dyn CredentialSource>);
        Self::with_credentials(config, credentials)
    }

    /// A client whose credentials come from `credentials`.
    pub fn with_credentials(
        config: &RegistryConfig,
        credentials: Option<Arc<dyn CredentialSource>>,
    ) -> Result<Self, RegistryError> {
        Ok(OciRegistry {
            base: config.url.clone(),
            transport: Transport::new(config)?,
            auth: Authenticator::new(credentials, &config.url, config.insecure),
            page_size: config.page_size,
        })
    }

    /// The registry's URL for an API path (below any path prefix of the configured URL).
    pub(crate) fn endpoint(&self, path: &str) -> Url {
        // The base may carry a path prefix; the API lives below it.
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// The registry's rate-limited transport, shared with the native listing APIs it serves.
    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The configured URL, whose origin every followed link must keep.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    /// `page_size`: `n` for `n`/`last` paging.
    pub(crate) fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Sends one request with the credentials `scope` needs, answering one 401 challenge.
    pub(crate) async fn request(
        &self,
        method: Method,
        url: &Url,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<Response, RegistryError> {
        for attempt in 0..2 {
            let auth = self
                .auth
                .header(&self.transport, scope)
                .await?
                .map(|a| sensitive(&a));
            let response = self
                .transport
                .send(|| {
                    let mut req = self.transport.client().request(method.clone(), url.clone());
                    if let Some(a) = &auth {
                        req = req.header(header::AUTHORIZATION, a.clone());
                    }
                    if let Some(accept) = accept {
                        req = req.header(header::ACCEPT, accept);
                    }
                    req
                })
                .await?;
            match response.status() {
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    self.auth.on_challenge(&response, scope)?;
                }
                s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    self.auth.refused_in(scope);
                    return Err(RegistryError::Unauthorized {
                        status: s.as_u16(),
                        what: "registry",
                    });
                }
                _ => return Ok(response),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// GETs `/v2/<repo>/<what>/<digest>` (`manifests` or `blobs`) and checks that the body is
    /// that content.
    async fn get_by_digest(
        &self,
        repo: &str,
        what: &str,
        digest: &str,
        accept: Option<&str>,
    ) -> Result<Vec<u8>, RegistryError> {
        if !valid_digest(digest) {
            return Err(RegistryError::Protocol(format!(
                "{repo}: malformed {what} digest {digest:?}"
            )));
        }
        let url = self.endpoint(&format!("/v2/{repo}/{what}/{digest}"));
        let scope = format!("repository:{repo}:pull");
        let response = self.request(Method::GET, &url, &scope, accept).await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::NotFound(format!("{repo}@{digest}")));
            }
            s => {
                return Err(RegistryError::Status {
                    status: s.as_u16(),
                    what: format!("GET {repo} {what}/{digest}"),
                });
            }
        }
        let body = read_body(response, MANIFEST_CAP).await?;
        if !matches_digest(&body, digest) {
            return Err(RegistryError::Protocol(format!(
                "GET {repo} {what}/{digest} served content with another digest"
            )));
        }
        Ok(body)
    }

    /// Follows `first` and its `Link: rel="next"` pages, returning every entry `extract` finds;
    /// `extract` may also report tags with digests the listing carries (`details`).
    ///
    /// The listing is complete, or an error. It ends at a page without `Link` that is shorter
    /// than `n`, or at an empty follow-up. A full page without `Link` is followed up with `last=`.
    /// Every follow-up must make progress: one that repeats names already listed, or brings
    /// names that sort before `last`, comes from a registry that ignores `last`. That is the end
    /// of the list only when it provably is: the registry ignored `n` too and sent everything on
    /// the page before (distribution 2.8's `tags/list`), or, asked for one name more than that
    /// page held, it still shows no more. Otherwise the list cannot be read completely from this
    /// registry, which is an error, never a short list. A name twice within one page is only a
    /// quirk.
    pub(crate) async fn paginate(
        &self,
        first: Url,
        scope: &str,
        extract: PageParser,
        details: &mut Vec<Tag>,
    ) -> Result<Vec<String>, RegistryError> {
        use std::collections::hash_map::Entry;
        use std::hash::BuildHasher;
        let page_size = self.page_size as usize;
        let mut items: Vec<String> = Vec::new();
        let mut highest: Option<String> = None;
        let mut pages = Pages::new(&self.base, first.path().to_owned());
        // 128-bit hashes of the names listed, with the page that first listed each: a fixed size
        // a name instead of a second copy of a million names; two independent random keys make
        // a collision (which would drop a name) as likely as a corrupted TCP segment passing.
        let keys = (
            std::collections::hash_map::RandomState::new(),
            std::collections::hash_map::RandomState::new(),
        );
        let mut seen: std::collections::HashMap<(u64, u64), usize> =
            std::collections::HashMap::new();
        // How many names the last page that brought new ones held.
        let mut last_progress = 0usize;
        let mut next = Some((first, None::<FollowUp>));
        while let Some((url, follow_up)) = next.take() {
            let page_index = pages.admit(&url)?;
            let response = self
                .request(Method::GET, &url, scope, None)
                .await
                .map_err(|e| pages.failed(e))?;
            match response.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND => {
                    return Err(pages.failed(RegistryError::NotFound(url.path().to_owned())));
                }
                s => {
                    return Err(pages.failed(RegistryError::Status {
                        status: s.as_u16(),
                        what: url.path().to_owned(),
                    }));
                }
            }
            let link = next_link(&response, &url, &pages)?;
            expect_json(&response)?;
            let body = read_body(response, BODY_CAP).await?;
            let page = extract(&body, details).map_err(|e| {
                RegistryError::Protocol(format!("invalid listing JSON from {}: {e}", url.path()))
            })?;
            let sent = page.len();
            if follow_up.is_some() && sent == 0 {
                break;
            }
            // Names new to this listing; names listed on an earlier page (each once); new names
            // that sort before the `last` asked for.
            let (mut fresh, mut behind) = (0usize, 0usize);
            let mut repeated = std::collections::HashSet::new();
            for name in page {
                let h = (keys.0.hash_one(&name), keys.1.hash_one(&name));
                match seen.entry(h) {
                    Entry::Occupied(first) => {
                        if *first.get() != page_index {
                            repeated.insert(h);
                        }
                    }
                    Entry::Vacant(v) => {
                        v.insert(page_index);
                        fresh += 1;
                        if let Some(f) = &follow_up
                            && name <= f.last
                        {
                            behind += 1;
                        }
                        if highest.as_ref().is_none_or(|h| name > *h) {
                            highest = Some(name.clone());
                        }
                        items.push(name);
                    }
                }
            }
            if !repeated.is_empty() || behind > 0 {
                match &follow_up {
                    // The registry ignores `last`, and this page brought nothing new.
                    Some(f) if fresh == 0 => {
                        if last_progress > page_size {
                            // The page before held more than `n` names: the registry ignores
                            // `n` too, and sent everything at once.
                            break;
                        }
                        if f.asked > page_size && repeated.len() < f.asked {
                            // Asked for one more than that page held, it has no more to show.
                            break;
                        }
                        if f.asked == page_size {
                            // A list of exactly `n` names, or one cut at `n`: ask for one more.
                            // (A registry that also caps `n` at exactly `page_size` and drops
                            // `Link` could still fool this; none that ignores `last` is known to.)
                            next = Some(follow_up_page(&url, page_size + 1, &f.last));
                            continue;
                        }
                    }
                    _ => {}
                }
                return Err(RegistryError::Protocol(format!(
                    "page {} of {} repeats names already listed or goes back before `last`: the \
                     registry does not page forward, so the listing cannot be read completely",
                    page_index + 1,
                    url.path()
                )));
            }
            last_progress = fresh;
            next = match link {
                Some(link) => Some((link, None)),
                // A full page without a Link may be the last one, or may come from a registry (or
                // a proxy) that dropped it: ask once more, for what sorts after the highest entry
                // seen so far. Never learned away: a registry that sent Link before can lose it
                // on the next page, and a listing cut short is a storm of phantom events. It
                // costs one request only for listings whose length is a multiple of page_size.
                None if sent >= page_size => highest
                    .as_ref()
                    .map(|last| follow_up_page(&url, page_size, last)),
                None => None,
            };
        }
        items.sort_unstable();
        Ok(items)
    }
}

/// A page this client asked for itself, with `last=`: for `asked` names past `last`.
struct FollowUp {
    last: String,
    asked: usize,
}

/// The follow-up of the page at `url`: the same query, with `n = asked` and `last`.
fn follow_up_page(url: &Url, asked: usize, last: &str) -> (Url, Option<FollowUp>) {
    let mut u = url.clone();
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "last" && k != "n")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("n", &asked.to_string())
        .append_pair("last", last);
    let f = FollowUp {
        last: last.to_owned(),
        asked,
    };
    (u, Some(f))
}

/// The `rel="next"` target of the response's `Link` header, resolved against `current` and
/// required to stay on the listing's origin.
pub(crate) fn next_link(
    response: &Response,
    current: &Url,
    pages: &Pages,
) -> Result<Option<Url>, RegistryError> {
    let Some(value) = response.headers().get(header::LINK) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| RegistryError::Protocol("Link header is not ASCII".into()))?;
    parse_next_link(value)
        .map(|target| pages.resolve(current, target))
        .transpose()
}

/// Extracts the target of the `rel="next"` entry from a `Link` header value.
pub fn parse_next_link(value: &str) -> Option<&str> {
    let mut rest = value;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        let is_next = after[..params_end].split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target);
        }
        rest = after;
    }
}

/// The tag names of one `tags/list` page. Where the page carries Google's `manifest` map, the
/// tags' digests and upload times go to `details`, which spares a HEAD per tag.
pub fn tags_of(body: &[u8], details: &mut Vec<Tag>) -> Result<Vec<String>, serde_json::Error> {
    let page = serde_json::from_slice::<TagsPage>(body)?;
    for (digest, m) in page.manifest.unwrap_or_default() {
        let pushed_at = m
            .time_uploaded_ms
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        details.extend(m.tag.into_iter().map(|name| Tag {
            name,
            digest: valid_digest(&digest).then(|| digest.clone()),
            pushed_at,
        }));
    }
    Ok(page.tags.unwrap_or_default())
}

/// The repository names of one `_catalog` page.
pub fn repositories_of(
    body: &[u8],
    _details: &mut Vec<Tag>,
) -> Result<Vec<String>, serde_json::Error> {
    serde_json::from_slice::<CatalogPage>(body).map(|p| p.repositories.unwrap_or_default())
}

#[async_trait]
impl Registry for OciRegistry {
    fn credential_source(&self) -> Option<String> {
        self.auth.source()
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        let url = self.endpoint("/v2/");
        let response = self.request(Method::GET, &url, "", None).await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound("no registry API at /v2/".into())),
            s => Err(RegistryError::Status {
                status: s.as_u16(),
                what: "/v2/".into(),
            }),
        }
    }

    async fn list_repositories(&self) -> Result<Vec<String>, RegistryError> {
        let mut url = self.endpoint("/v2/_catalog");
        url.query_pairs_mut()
            .append_pair("n", &self.page_size.to_string());
        let repos = self
            .paginate(url, "registry:catalog:*", repositories_of, &mut Vec::new())
            .await?;
        if let Some(bad) = repos.iter().find(|r| !valid_repository(r)) {
            return Err(RegistryError::Protocol(format!(
                "catalog lists an invalid repository name {bad:?}"
            )));
        }
        Ok(repos)
    }

    async fn list_tags(&self, repo: &str) -> Result<Vec<Tag>, RegistryError> {
        let mut url = self.endpoint(&format!("/v2/{repo}/tags/list"));
        url.query_pairs_mut()
            .append_pair("n", &self.page_size.to_string());
        let scope = format!("repository:{repo}:pull");
        let mut details = Vec::new();
        let tags = self.paginate(url, &scope, tags_of, &mut details).await?;
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return Err(RegistryError::Protocol(format!(
                "{repo} lists an invalid tag {bad:?}"
            )));
        }
        let mut known: std::collections::HashMap<String, Tag> = std::collections::HashMap::new();
        for t in details {
            match known.entry(t.name.clone()) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(t);
                }
                // A tag under two manifests in the map: which one it points at is unknown, so
                // nothing the map says of it is believed (a HEAD asks when the digest matters). The
                // same entry again (a page served twice) is no conflict.
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let entry = o.get_mut();
                    if entry.digest != t.digest {
                        entry.digest = None;
                        entry.pushed_at = None;
                    }
                }
            }
        }
        Ok(tags
            .into_iter()
            .map(|name| {
                known.remove(&name).unwrap_or(Tag {
                    name,
                    digest: None,
                    pushed_at: None,
                })
            })
            .collect())
    }

    async fn platforms(&self, repo: &str, digest: &str) -> Result<Vec<String>, RegistryError> {
        let body = self
            .get_by_digest(repo, "manifests", digest, Some(MANIFEST_ACCEPT))
            .await?;
        // Content that hashed to its digest is the same on every retry: when it names no platform
        // we can read, the image has none we can report (like an artifact), rather than failing
        // the repository's scan on every cycle.
        let unreadable = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(repository = %repo, %digest, error = %e, "{what} names no readable platform; reported with none");
            Vec::new()
        };
        let mut names = match manifest_platforms(&body) {
            Err(e) => unreadable("manifest", &e),
            Ok(Platforms::Listed(names)) => names,
            Ok(Platforms::InConfig(_, Some(size))) if size > MANIFEST_CAP as u64 => unreadable(
                "image config",
                &format!("{size} bytes, over {MANIFEST_CAP}"),
            ),
            Ok(Platforms::InConfig(config, _)) => {
                let body = self.get_by_digest(repo, "blobs", &config, None).await?;
                match serde_json::from_slice::<Platform>(&body) {
                    Ok(platform) => platform.name().into_iter().collect(),
                    Err(e) => unreadable("image config", &e),
                }
            }
            Ok(Platforms::None) => Vec::new(),
        };
        names.sort_unstable();
        names.dedup();
        if names.len() > MAX_PLATFORMS {
            tracing::warn!(repository = %repo, %digest, platforms = names.len(), "image names more platforms than {MAX_PLATFORMS}; reporting the first {MAX_PLATFORMS}");
            names.truncate(MAX_PLATFORMS);
        }
        Ok(names)
    }

    async fn digest(&self, repo: &str, tag: &str) -> Result<String, RegistryError> {
        let url = self.endpoint(&format!("/v2/{repo}/manifests/{tag}"));
        let scope = format!("repository:{repo}:pull");
        let response = self
            .request(Method::HEAD, &url, &scope, Some(MANIFEST_ACCEPT))
            .await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(RegistryError::NotFound(format!("{repo}:{tag}"))),
            s => {
                return Err(RegistryError::Status {
                    status: s.as_u16(),
                    what: format!("HEAD {repo}:{tag}"),
                });
            }
        }
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::Protocol(format!("HEAD {repo}:{tag} has no Docker-Content-Digest"))
            })?;
        if !valid_digest(digest) {
            return Err(RegistryError::Protocol(format!(
                "HEAD {repo}:{tag} has a malformed digest"
            )));
        }
        Ok(digest.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_next_is_found() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(
            parse_next_link(r#"<https://h/p1>; rel="prev", <https://h/p3>; rel="next""#),
            Some("https://h/p3")
        );
        assert_eq!(
            parse_next_link(r#"<https://h/p>; rel=next"#),
            Some("https://h/p")
        );
        assert_eq!(parse_next_link(r#"<https://h/p>; rel="prev""#), None);
        assert_eq!(parse_next_link("garbage"), None);
        assert_eq!(parse_next_link("<unterminated; rel=next"), None);
    }

    #[test]
    fn google_manifest_map_gives_digests_and_upload_times() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let body = format!(
            r#"{{"name":"p/app","tags":["v1","latest"],"manifest":{{"{digest}":{{"tag":["v1","latest"],"timeUploadedMs":"1600000000000","mediaType":"x"}}}},"child":[]}}"#
        );
        let mut details = Vec::new();
        assert_eq!(
            tags_of(body.as_bytes(), &mut details).unwrap(),
            vec!["v1", "latest"]
        );
        assert_eq!(details.len(), 2);
        assert!(
            details
                .iter()
                .all(|t| t.digest.as_deref() == Some(digest.as_str()))
        );
        let at = details[0].pushed_at.unwrap();
        assert_eq!(
            humantime::format_rfc3339(at).to_string(),
            "2020-09-13T12:26:40Z"
        );
    }

    #[test]
    fn manifests_name_their_platforms() {
        // An OCI index as buildx pushes it: two images and an attestation manifest.
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"architecture":"arm","os":"linux","variant":"v7"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:c","size":1,"platform":{"architecture":"unknown","os":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}}]}"#;
        assert_eq!(
            manifest_platforms(index).unwrap(),
            Platforms::Listed(vec!["linux/arm/v7".into(), "linux/amd64".into()])
        );
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:cfg","size":1},"layers":[]}"#;
        assert_eq!(
            manifest_platforms(image).unwrap(),
            Platforms::InConfig("sha256:cfg".into(), Some(1))
        );
        let chart = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:cfg","size":1},"layers":[]}"#;
        assert_eq!(manifest_platforms(chart).unwrap(), Platforms::None);
        let config: Platform = serde_json::from_slice(
            br#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{}}"#,
        )
        .unwrap();
        assert_eq!(config.name().as_deref(), Some("linux/arm64/v8"));
        let odd = |os: &str, arch: &str| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: None,
        };
        assert_eq!(odd("linux", &"a".repeat(65)).name(), None, "too long");
        assert_eq!(odd("linux", "amd64\n").name(), None, "not a name");
        assert_eq!(
            odd("linux", "ppc64le").name().as_deref(),
            Some("linux/ppc64le")
        );
    }

    #[test]
    fn content_must_match_its_digest() {
        let body = b"{}";
        let sha256 = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        assert!(matches_digest(body, sha256));
        assert!(matches_digest(
            body,
            &sha256.to_uppercase().replace("SHA256", "sha256")
        ));
        assert!(!matches_digest(b"{ }", sha256));
        let sha512 = "sha512:27c74670adb75075fad058d5ceaf7b20c4e7786c83bae8a32f626f9782af34c9a33c2046ef60fd2a7878d378e29fec851806bbd9a67878f3a9f1cda4830763fd";
        assert!(matches_digest(body, sha512));
        assert!(!matches_digest(b"{ }", sha512));
        assert!(!matches_digest(
            body,
            "md5:99914b932bd37a50b983c5e7c90ae93b"
        ));
    }

    #[test]
    fn listing_json_tolerates_null_tags() {
        assert_eq!(
            tags_of(br#"{"name":"a","tags":null}"#, &mut Vec::new()).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            tags_of(br#"{"name":"a","tags":["x","y"]}"#, &mut Vec::new()).unwrap(),
            vec!["x", "y"]
        );
        assert!(
            tags_of(b"{\"tags\":[\"x\"", &mut Vec::new()).is_err(),
            "truncated body"
        );
        assert!(
            tags_of(b"{\"tags\":[\"\xff\"]}", &mut Vec::new()).is_err(),
            "invalid UTF-8"
        );
        assert_eq!(
            repositories_of(br#"{"repositories":["a/b"]}"#, &mut Vec::new()).unwrap(),
            vec!["a/b"]
        );
    }
}
