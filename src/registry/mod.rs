//! The [`Registry`] trait that every adapter implements, and the types a listing is made of.

pub mod acr;
pub mod auth;
pub mod azure;
pub mod credential_cache;
pub mod docker_config;
pub mod dockerhub;
pub mod ecr;
pub mod gcr;
pub mod google;
pub mod http;
pub mod native;
pub mod oci;
pub mod pager;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::config::{Kind, Provider, RegistryConfig};

/// One tag as a registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Tag name.
    pub name: String,
    /// Manifest digest, when the listing carries it for free.
    pub digest: Option<String>,
    /// When the registry says the image was pushed, if it says.
    pub pushed_at: Option<SystemTime>,
}

/// Why a registry call failed. Every variant means "this listing is not complete".
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// 401/403 from the registry or its token endpoint.
    #[error("invalid credentials ({status}) from {what}")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// "registry" or "token endpoint".
        what: &'static str,
    },
    /// 404 for a repository or tag.
    #[error("not found: {0}")]
    NotFound(String),
    /// Connection refused, DNS, TLS, timeout.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// 429 that outlived the retries.
    #[error("rate limited (429)")]
    RateLimited {
        /// What `Retry-After` asked for.
        retry_after: Option<Duration>,
    },
    /// The credential source could not produce credentials (a missing token file, an unreachable
    /// metadata server); the reason never holds a secret.
    #[error("no credentials: {0}")]
    NoCredentials(String),
    /// Any other unexpected status.
    #[error("unexpected HTTP status {status} for {what}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The request, without query secrets.
        what: String,
    },
    /// A body or header that breaks the protocol: bad JSON, oversize, foreign Link, missing digest.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl RegistryError {
    /// Whether retrying the same request soon may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            // A credential source that fails now (a token file not yet mounted, a metadata
            // server restarting) may work on the next try.
            RegistryError::Unreachable(_)
            | RegistryError::RateLimited { .. }
            | RegistryError::NoCredentials(_) => true,
            RegistryError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The short outcome `regwatch check` prints.
    pub fn check_outcome(&self) -> String {
        match self {
            RegistryError::Unauthorized { .. } => "invalid credentials (401/403)".into(),
            RegistryError::NotFound(_) => "not found".into(),
            RegistryError::Unreachable(reason) => format!("unreachable: {reason}"),
            RegistryError::NoCredentials(reason) => format!("no credentials: {reason}"),
            other => format!("error: {other}"),
        }
    }
}

/// A registry adapter: lists repositories and tags, and resolves digests.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Checks that the registry answers and accepts the credentials.
    async fn ping(&self) -> Result<(), RegistryError>;
    /// Every repository the catalog lists (complete, or an error).
    async fn list_repositories(&self) -> Result<Vec<String>, RegistryError>;
    /// Every tag of `repo` (complete, or an error), with digests where the listing carries them.
    /// A repository that does not exist is `NotFound`.
    async fn list_tags(&self, repo: &str) -> Result<Vec<Tag>, RegistryError>;
    /// The manifest digest of `repo:tag`, without pulling the manifest.
    async fn digest(&self, repo: &str, tag: &str) -> Result<String, RegistryError>;
    /// The platforms (`os/arch[/variant]`, sorted, deduplicated) of the image `repo@digest`: a GET
    /// of the manifest, plus one of its config blob when it is a single-platform image. No default:
    /// an adapter that wraps another must pass this on, and one that cannot read manifests makes
    /// config load refuse `platforms` for its kind.
    async fn platforms(&self, repo: &str, digest: &str) -> Result<Vec<String>, RegistryError>;
    /// Where the credentials come from, for `regwatch check`; `None` when anonymous.
    fn credential_source(&self) -> Option<String> {
        None
    }
}

/// Builds the adapter for a registry entry.
pub fn connect(config: &RegistryConfig) -> Result<Arc<dyn Registry>, RegistryError> {
    Ok(match &config.provider {
        Provider::Distribution => {
            let credentials: Option<Arc<dyn auth::CredentialSource>> =
                match docker_config::DockerConfigSource::for_registry(config) {
                    Some(source) => Some(Arc::new(source)),
                    None => config.credentials.clone().map(|c| Arc::new(c) as _),
                };
            let oci = oci::OciRegistry::with_credentials(config, credentials.clone())?;
            // Harbor and Docker Hub list digests and push times natively (see `native`).
            let api = match (config.kind, &config.hub_api) {
                (Kind::Harbor, _) => native::Api::Harbor(native::harbor::Harbor::new(credentials)),
                (Kind::Dockerhub, Some(hub)) => {
                    native::Api::Hub(native::hub::Hub::new(hub.clone(), credentials))
                }
                _ => return Ok(Arc::new(oci)),
            };
            Arc::new(native::NativeRegistry::new(&config.name, oci, api))
        }
        Provider::Ecr(ecr) => Arc::new(ecr::EcrRegistry::new(config, ecr)),
        Provider::Gcr(gcr) => {
            // A key or an impersonation set in the entry wins; else docker_config before ADC.
            let docker = docker_config::DockerConfigSource::for_registry(config)
                .filter(|_| gcr.json_key.is_none() && gcr.impersonate_service_account.is_none());
            let source: Arc<dyn auth::CredentialSource> = match docker {
                Some(docker) => Arc::new(docker),
                None => Arc::new(gcr::GoogleCredentials::new(gcr, config.request_timeout)?),
            };
            Arc::new(oci::OciRegistry::with_credentials(config, Some(source))?)
        }
        Provider::Acr(acr) => {
            let source = acr::source(config, acr)?;
            let oci = oci::OciRegistry::with_credentials(config, Some(source))?;
            Arc::new(native::NativeRegistry::new(
                &config.name,
                oci,
                native::Api::Acr,
            ))
        }
    })
}

/// Whether `name` is a valid repository name per the Distribution spec (safe to put in a URL path).
pub fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
                && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
        })
}

/// The longest tag any supported registry allows: ECR's 300 characters (the Distribution spec's
/// grammar stops at 128; the event schema follows the longer).
pub const MAX_TAG_LEN: usize = 300;

/// Whether `tag` is a valid tag: the Distribution grammar `[A-Za-z0-9_][A-Za-z0-9_.-]*`, up to
/// [`MAX_TAG_LEN`] characters.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// Whether `digest` is `sha256:` or `sha512:` and lower-case hex, as the OCI image spec
/// registers them (`[a-f0-9]{64}`, `[a-f0-9]{128}`); the event schema says the same.
pub fn valid_digest(digest: &str) -> bool {
    let lower_hex = |hex: &str, len| {
        hex.len() == len
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    match digest.split_once(':') {
        Some(("sha256", hex)) => lower_hex(hex, 64),
        Some(("sha512", hex)) => lower_hex(hex, 128),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_distribution_grammar() {
        assert!(valid_repository("team/app"));
        assert!(valid_repository("a.b-c_d/e2"));
        assert!(!valid_repository("Team/app"));
        assert!(!valid_repository("team//app"));
        assert!(!valid_repository("../etc"));
        assert!(!valid_repository("app?x=1"));
        assert!(valid_tag("v1.2.3"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".hidden"));
        assert!(!valid_tag("a/b"));
        assert!(valid_tag(&"a".repeat(300)), "ECR allows 300 characters");
        assert!(!valid_tag(&"a".repeat(301)));
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(
            !valid_digest(&format!("sha256:{}", "A".repeat(64))),
            "upper case is not the OCI encoding"
        );
        assert!(!valid_digest("sha256:xyz"));
        assert!(!valid_digest("md5:abc"));
    }
}
