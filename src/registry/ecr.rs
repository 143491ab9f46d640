//! AWS ECR through its own API (aws-sdk-ecr): repositories from DescribeRepositories, and tags,
//! digests and push times from DescribeImages, 1,000 images per request. No Distribution calls and
//! no token juggling: the SDK signs each request, and refreshes role credentials itself.
//! Credentials (static, the default chain, an assumed role) are set up in [`credentials`].

mod credentials;

use std::future::Future;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecr::types::{DescribeImagesFilter, ImageIdentifier, TagStatus};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

use super::http::Limiter;
use super::{Registry, RegistryError, Tag};
use crate::config::{EcrConfig, RegistryConfig};

/// A paginated listing needing more requests than this is refused as runaway.
const MAX_PAGES: usize = 100_000;

/// The account and region an ECR registry host names:
/// `<account>.dkr.ecr.<region>.amazonaws.com` (and `.com.cn`).
pub fn account_and_region(host: &str) -> Option<(&str, &str)> {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [account, "dkr", "ecr", region, "amazonaws", "com", ..] => Some((*account, *region)),
        _ => None,
    }
}

/// Whether `id` is an AWS account id (12 digits), as ECR's registry id is.
pub fn valid_registry_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `arn` names an IAM role as STS AssumeRole takes it:
/// `arn:<aws|aws-cn|aws-us-gov>:iam::<12 digits>:role/<path/name>`.
pub fn valid_role_arn(arn: &str) -> bool {
    let Some(rest) = ["arn:aws:iam::", "arn:aws-cn:iam::", "arn:aws-us-gov:iam::"]
        .iter()
        .find_map(|p| arn.strip_prefix(p))
    else {
        return false;
    };
    let Some((account, name)) = rest.split_once(":role/") else {
        return false;
    };
    valid_registry_id(account)
        && arn.len() <= 2048
        && !name.is_empty()
        && !name.ends_with('/')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
}

/// Whether `name` is a valid STS role session name (`[\w+=,.@-]{2,64}`).
pub fn valid_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// Whether `id` is a valid STS external id (`[\w+=,.@:/-]{2,1224}`).
pub fn valid_external_id(id: &str) -> bool {
    (2..=1224).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@:/_-".contains(c))
}

/// An ECR registry (one account, one region).
pub struct EcrRegistry {
    config: EcrConfig,
    limiter: Limiter,
    /// Each attempt of an ECR or STS call ends after this (`request_timeout`).
    request_timeout: std::time::Duration,
    client: OnceCell<(Client, credentials::Credentials)>,
}

impl EcrRegistry {
    /// A client for one `kind = "ecr"` entry; the SDK is set up on first use.
    pub fn new(registry: &RegistryConfig, config: &EcrConfig) -> Self {
        EcrRegistry {
            config: config.clone(),
            limiter: Limiter::new(registry),
            request_timeout: registry.request_timeout,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        &self
            .client
            .get_or_init(|| async {
                // The SDK's default sets a connect timeout only: an endpoint that accepts and
                // never answers would hold the scan forever. Per attempt, so its retries still
                // run; the STS client of role_arn is built from this config too.
                let timeouts = aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .operation_attempt_timeout(self.request_timeout)
                    .build();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.config.region.clone()))
                    .timeout_config(timeouts);
                if let Some((id, secret)) = &self.config.keys {
                    let static_keys = aws_sdk_ecr::config::Credentials::new(
                        id,
                        secret.expose_secret(),
                        None,
                        None,
                        "regwatch-config",
                    );
                    loader = loader.credentials_provider(static_keys);
                }
                let sdk = loader.load().await;
                let credentials = credentials::Credentials::new(&self.config, &sdk).await;
                // The endpoint override is ECR's alone: STS (for role_arn) keeps its own.
                let mut ecr = aws_sdk_ecr::config::Builder::from(&sdk)
                    .credentials_provider(credentials.provider.clone());
                if let Some(endpoint) = &self.config.endpoint {
                    ecr = ecr.endpoint_url(endpoint.as_str().trim_end_matches('/'));
                }
                (Client::from_conf(ecr.build()), credentials)
            })
            .await
            .0
    }

    /// Waits on the limiter, then records the outcome of one API call.
    async fn call<T, E>(
        &self,
        request: impl Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<T, RegistryError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.limiter.wait().await;
        let result = request.await;
        let metrics = crate::metrics::get();
        match result {
            Ok(v) => {
                metrics.request(self.limiter.registry(), Some(200));
                Ok(v)
            }
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                metrics.request(self.limiter.registry(), status);
                Err(sdk_error(e))
            }
        }
    }
}

/// Maps an SDK failure to the outcomes `check` and the scheduler distinguish.
fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: SdkError<E>,
) -> RegistryError {
    if !matches!(e, SdkError::ServiceError(_))
        && let Some(failure) = credentials::credentials_failure(&e)
    {
        return failure;
    }
    match &e {
        SdkError::DispatchFailure(d) => RegistryError::Unreachable(format!(
            "{:?}",
            d.as_connector_error().map(|c| c.to_string())
        )),
        SdkError::TimeoutError(_) => RegistryError::Unreachable("timed out".into()),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match e.code().unwrap_or_default() {
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "AccessDeniedException"
                | "ExpiredTokenException"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "MissingAuthenticationToken" => RegistryError::Unauthorized {
                    status: if status == 400 { 403 } else { status },
                    what: "ECR",
                },
                "RepositoryNotFoundException"
                | "ImageNotFoundException"
                | "RegistryNotFoundException" => {
                    RegistryError::NotFound(e.message().unwrap_or("ECR: not found").to_owned())
                }
                "ThrottlingException" | "ThrottledException" | "TooManyRequestsException" => {
                    RegistryError::RateLimited { retry_after: None }
                }
                // Whatever the code says, 401/403 is the credentials' verdict.
                _ if status == 401 || status == 403 => RegistryError::Unauthorized {
                    status,
                    what: "ECR",
                },
                code => RegistryError::Status {
                    status,
                    what: format!("ECR {code}"),
                },
            }
        }
        _ => RegistryError::Protocol(format!(
            "ECR: {}",
            aws_sdk_ecr::error::DisplayErrorContext(&e)
        )),
    }
}

/// Collects every page `fetch` returns, following its next token, refusing repeated tokens and
/// runaway page counts. Separate from the SDK so that it can be tested without a server (moto
/// ignores paging).
pub async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, RegistryError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), RegistryError>>,
{
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut token = None;
    for _ in 0..MAX_PAGES {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        match next {
            None => return Ok(out),
            Some(t) if !seen.insert(t.clone()) => {
                return Err(RegistryError::Protocol(
                    "pagination returned a token it already gave".into(),
                ));
            }
            Some(t) => token = Some(t),
        }
    }
    Err(RegistryError::Protocol(format!(
        "more than {MAX_PAGES} pages; refusing runaway pagination"
    )))
}

#[async_trait]
impl Registry for EcrRegistry {
    async fn platforms(&self, _repo: &str, _digest: &str) -> Result<Vec<String>, RegistryError> {
        // Config load refuses `platforms` for ecr: DescribeImages does not return them.
        Err(RegistryError::Protocol(
            "kind ecr does not read platforms".into(),
        ))
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        let client = self.client().await;
        let request = client
            .describe_repositories()
            .registry_id(&self.config.registry_id)
            .max_results(1)
            .send();
        self.call(request).await.map(|_| ())
    }

    async fn list_repositories(&self) -> Result<Vec<String>, RegistryError> {
        let client = self.client().await;
        collect_pages(|token| async move {
            let request = client
                .describe_repositories()
                .registry_id(&self.config.registry_id)
                .max_results(1000)
                .set_next_token(token)
                .send();
            let page = self.call(request).await?;
            let names = page
                .repositories()
                .iter()
                .filter_map(|r| r.repository_name().map(str::to_owned))
                .collect();
            Ok((names, page.next_token().map(str::to_owned)))
        })
        .await
    }

    async fn list_tags(&self, repo: &str) -> Result<Vec<Tag>, RegistryError> {
        let client = self.client().await;
        let tagged = DescribeImagesFilter::builder()
            .tag_status(TagStatus::Tagged)
            .build();
        let mut tags: Vec<Tag> = collect_pages(|token| {
            let tagged = tagged.clone();
            async move {
                let request = client
                    .describe_images()
                    .registry_id(&self.config.registry_id)
                    .repository_name(repo)
                    .filter(tagged)
                    .max_results(1000)
                    .set_next_token(token)
                    .send();
                let page = self.call(request).await?;
                let mut tags = Vec::new();
                for image in page.image_details() {
                    // A malformed digest is left to the digest lookup, as if not listed.
                    let digest = image
                        .image_digest()
                        .filter(|d| super::valid_digest(d))
                        .map(str::to_owned);
                    let pushed_at = image
                        .image_pushed_at()
                        .and_then(|t| SystemTime::try_from(*t).ok());
                    for name in image.image_tags() {
                        // ECR's own rule is only a length (1 to 300): a tag outside the
                        // Distribution grammar (say `1.0+build`) cannot be pulled by name, so it
                        // is skipped, alone, rather than failing its repository.
                        if !super::valid_tag(name) {
                            tracing::debug!(repository = %repo, tag = %name, "skipping a tag outside the Distribution grammar");
                            continue;
                        }
                        tags.push(Tag {
                            name: name.clone(),
                            digest: digest.clone(),
                            pushed_at,
                        });
                    }
                }
                Ok((tags, page.next_token().map(str::to_owned)))
            }
        })
        .await?;
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        tags.dedup_by(|a, b| a.name == b.name);
        Ok(tags)
    }

    async fn digest(&self, repo: &str, tag: &str) -> Result<String, RegistryError> {
        let client = self.client().await;
        let request = client
            .describe_images()
            .registry_id(&self.config.registry_id)
            .repository_name(repo)
            .image_ids(ImageIdentifier::builder().image_tag(tag).build())
            .send();
        let page = self.call(request).await?;
        page.image_details()
            .first()
            .and_then(|i| i.image_digest())
            .map(str::to_owned)
            .ok_or_else(|| RegistryError::NotFound(format!("{repo}:{tag}")))
    }

    fn credential_source(&self) -> Option<String> {
        self.client.get().and_then(|(_, c)| c.source())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_region_come_from_the_registry_host() {
        assert_eq!(
            account_and_region("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(("123456789012", "eu-west-1"))
        );
        assert_eq!(
            account_and_region("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some(("123456789012", "cn-north-1"))
        );
        assert_eq!(account_and_region("ecr.example.com"), None);
        assert!(valid_registry_id("123456789012"));
        assert!(!valid_registry_id("12345678901a"));
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_end() {
        let pages = [
            (vec![1, 2], Some("a")),
            (vec![3], Some("b")),
            (vec![4, 5], None),
        ];
        let mut calls = Vec::new();
        let all = collect_pages(|token| {
            calls.push(token.clone());
            let i = calls.len() - 1;
            let (items, next) = pages[i].clone();
            async move { Ok((items, next.map(String::from))) }
        })
        .await
        .unwrap();
        assert_eq!(all, vec![1, 2, 3, 4, 5]);
        assert_eq!(calls, vec![None, Some("a".into()), Some("b".into())]);
    }

    #[tokio::test]
    async fn repeated_tokens_and_errors_stop_the_listing() {
        let looped = collect_pages(|_| async { Ok((vec![1], Some("same".to_string()))) }).await;
        assert!(matches!(looped, Err(RegistryError::Protocol(m)) if m.contains("already gave")));
        let mut n = 0;
        let failed: Result<Vec<i32>, _> = collect_pages(|_| {
            n += 1;
            let fail = n == 2;
            async move {
                if fail {
                    Err(RegistryError::Unreachable("boom".into()))
                } else {
                    Ok((vec![1], Some(format!("t{n}"))))
                }
            }
        })
        .await;
        assert!(
            failed.is_err(),
            "an error on any page fails the whole listing"
        );
    }
}
