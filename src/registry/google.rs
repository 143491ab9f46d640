//! Google OAuth2 access tokens for GCR and Artifact Registry: from a configured service-account
//! key, or else from Application Default Credentials; optionally traded for a token of another
//! service account through the IAM Credentials API (impersonation).
//!
//! yup-oauth2 signs the service-account JWT (it honours the key's `token_uri`). The other flows are
//! small and written here with reqwest, because yup-oauth2 hard-codes Google's hosts for them (its
//! authorized-user flow ignores the file's `token_uri`, its impersonator the IAM endpoint), does not
//! read `GCE_METADATA_HOST`, and logs token responses at debug level.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;
use yup_oauth2::authenticator::DefaultAuthenticator;

use super::RegistryError;
use super::credential_cache::CredentialCache;

/// The least OAuth2 scope that reading a registry needs. Google documents it for both products:
/// Container Registry, "For docker pull and docker search, the access token must use the
/// devstorage.read_only scope" (cloud.google.com/container-registry/docs/advanced-authentication);
/// Artifact Registry, "To pull container images from Artifact Registry repositories, [...] ensure
/// the read-only access scope is set for Cloud Storage storage buckets"
/// (cloud.google.com/artifact-registry/docs/integrate-compute). `cloud-platform` would hand every
/// realm that sees the token read-write access to all of the account's Google Cloud APIs.
pub const READ_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
/// The scope the IAM Credentials API requires of the caller's token.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// google-auth's default when a credentials file names no `token_uri`.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The IAM Credentials API; `iam_endpoint` overrides it (Private Service Connect, tests).
pub const DEFAULT_IAM_ENDPOINT: &str = "https://iamcredentials.googleapis.com";
/// The metadata server's name on GCE and GKE; `GCE_METADATA_HOST` overrides it.
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// Credential files and token responses are small; anything bigger is refused.
const BODY_CAP: usize = 64 * 1024;
/// The lifetime asked of the IAM Credentials API: its default and its maximum without an org policy.
const IMPERSONATED_LIFETIME: &str = "3600s";

/// The environment Application Default Credentials read, taken once when a registry is connected
/// (the files it names are read again at every refresh, so a rotated file is picked up).
#[derive(Debug, Clone, Default)]
pub struct AdcEnv {
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub credentials_file: Option<PathBuf>,
    /// gcloud's `application_default_credentials.json`, under `CLOUDSDK_CONFIG` or
    /// `~/.config/gcloud`.
    pub gcloud_file: Option<PathBuf>,
    /// `GCE_METADATA_HOST`, else `metadata.google.internal`.
    pub metadata_host: String,
}

impl AdcEnv {
    /// What this process's environment says.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let gcloud_dir = var("CLOUDSDK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".config/gcloud")));
        AdcEnv {
            credentials_file: var("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from),
            gcloud_file: gcloud_dir.map(|d| d.join("application_default_credentials.json")),
            metadata_host: std::env::var("GCE_METADATA_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_METADATA_HOST.into()),
        }
    }
}

/// Where the source credentials come from.
pub enum Source {
    /// The registry's `json_key`/`json_key_file`, checked at load.
    Key(SecretString),
    /// Application Default Credentials.
    Adc(AdcEnv),
}

/// `impersonate_service_account`, with the IAM Credentials API to ask.
pub struct Impersonation {
    /// The target service account's email.
    pub email: String,
    /// `iam_endpoint`, else the public API.
    pub endpoint: Url,
}

/// An access token and how long it lives from now (clamped, and renewed early, by the cache).
struct Token {
    value: SecretString,
    lifetime: Duration,
}

impl Token {
    fn new(value: String, lifetime: Duration) -> Result<Token, RegistryError> {
        if value.is_empty() || value.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(RegistryError::Protocol(
                "Google returned an empty or malformed access token".into(),
            ));
        }
        Ok(Token {
            value: value.into(),
            lifetime,
        })
    }
}

/// Mints and caches the access token the registry's token realm is shown.
pub struct GoogleTokens {
    source: Source,
    impersonate: Option<Impersonation>,
    http: reqwest::Client,
    metadata: reqwest::Client,
    /// The token the realm is shown; scans that need one at the same moment share one mint,
    /// and its failure.
    cache: CredentialCache<(), SecretString>,
    /// The registry's `request_timeout`, for yup-oauth2, whose requests have none of their own.
    timeout: Duration,
    /// The source the last token came from, for `check`.
    described: std::sync::Mutex<String>,
    /// yup-oauth2's authenticator for the service-account key in use, rebuilt if the key changes.
    service_account: tokio::sync::Mutex<Option<(SecretString, Arc<DefaultAuthenticator>)>>,
}

impl GoogleTokens {
    /// Tokens from `source`, impersonating `impersonate` if set.
    pub fn new(
        source: Source,
        impersonate: Option<Impersonation>,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let build = |connect: Duration| {
            reqwest::Client::builder()
                .user_agent(concat!("regwatch/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(connect)
                .timeout(timeout)
                // Token requests carry secrets: they go where configured, never elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| RegistryError::Unreachable(format!("cannot build HTTP client: {e}")))
        };
        // Until a token is minted, ADC has not yet picked a source.
        let described = match &source {
            Source::Key(_) => "service-account key".to_owned(),
            Source::Adc(_) => "application default credentials".to_owned(),
        };
        let described = with_target(described, impersonate.as_ref().map(|i| &i.email));
        Ok(GoogleTokens {
            source,
            impersonate,
            http: build(Duration::from_secs(10))?,
            // Google's Go metadata client dials with a 2 s timeout: off Google Cloud, nothing answers.
            metadata: build(Duration::from_secs(2))?,
            cache: CredentialCache::new(),
            timeout,
            described: std::sync::Mutex::new(described),
            service_account: tokio::sync::Mutex::new(None),
        })
    }

    /// The access token to use now, minted if the cached one is near expiry.
    pub async fn token(&self) -> Result<SecretString, RegistryError> {
        self.cache
            .get(&(), || async move {
                let (token, described) = self.mint().await?;
                *self.described.lock().expect("describe lock") = described;
                Ok((token.value, token.lifetime))
            })
            .await
    }

    /// Where the last token came from, e.g. "application default credentials: metadata server".
    pub fn describe(&self) -> String {
        self.described.lock().expect("describe lock").clone()
    }

    /// The token was refused: mint a new one next time, unless it was minted moments ago.
    pub fn forget(&self) {
        // yup-oauth2 caches the token it minted: a new one needs a new authenticator.
        if self.cache.refused(&())
            && let Ok(mut sa) = self.service_account.try_lock()
        {
            *sa = None;
        }
    }

    async fn mint(&self) -> Result<(Token, String), RegistryError> {
        // The IAM Credentials API wants a cloud-platform token from the caller; the token the
        // registry sees is the impersonated one, scoped read-only.
        let scope = if self.impersonate.is_some() {
            CLOUD_PLATFORM
        } else {
            READ_SCOPE
        };
        let (token, described) = match &self.source {
            Source::Key(key) => (
                self.service_account_token(key, scope, "json_key").await?,
                "service-account key".to_owned(),
            ),
            Source::Adc(env) => self.adc(env, scope).await?,
        };
        match &self.impersonate {
            None => Ok((token, described)),
            Some(target) => {
                let url = format!(
                    "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
                    target.endpoint.as_str().trim_end_matches('/'),
                    target.email
                );
                let token = self
                    .generate_access_token(&url, &token.value, &[], READ_SCOPE)
                    .await?;
                Ok((token, with_target(described, Some(&target.email))))
            }
        }
    }

    /// Application Default Credentials, in the order Google documents
    /// (https://cloud.google.com/docs/authentication/application-default-credentials):
    /// "ADC searches for credentials in the following locations:
    ///  1. GOOGLE_APPLICATION_CREDENTIALS environment variable
    ///  2. User credentials set up by using the Google Cloud CLI
    ///  3. The attached service account, returned by the metadata server".
    ///
    /// As in Google's libraries, a set variable is final: a bad file there is an error, not a
    /// reason to look further.
    async fn adc(&self, env: &AdcEnv, scope: &str) -> Result<(Token, String), RegistryError> {
        if let Some(path) = &env.credentials_file {
            let what = "GOOGLE_APPLICATION_CREDENTIALS";
            let json = read_credentials(path, what)?;
            let (token, kind) = self.file_token(&json, scope, what).await?;
            return Ok((
                token,
                format!("application default credentials: {what}, {kind}"),
            ));
        }
        if let Some(path) = env.gcloud_file.as_ref().filter(|p| p.exists()) {
            let what = "gcloud application_default_credentials.json";
            let json = read_credentials(path, what)?;
            let (token, kind) = self.file_token(&json, scope, what).await?;
            return Ok((
                token,
                format!("application default credentials: gcloud, {kind}"),
            ));
        }
        let token = self.metadata_token(&env.metadata_host, scope).await?;
        Ok((
            token,
            "application default credentials: metadata server".into(),
        ))
    }

    /// A token from a credentials file: `service_account`, `authorized_user`, or
    /// `impersonated_service_account` (what `gcloud auth application-default login
    /// --impersonate-service-account` writes). Returns the token and the file's type.
    async fn file_token(
        &self,
        json: &SecretString,
        scope: &str,
        what: &str,
    ) -> Result<(Token, &'static str), RegistryError> {
        match file_type(json, what)?.as_str() {
            "impersonated_service_account" => {
                let file: ImpersonatedFile = parse(json, what)?;
                let source: SecretString = file.source_credentials.to_string().into();
                let inner = format!("{what} source_credentials");
                let source = match file_type(&source, &inner)?.as_str() {
                    t @ ("service_account" | "authorized_user") => {
                        self.simple_file(&source, t, CLOUD_PLATFORM, &inner).await?
                    }
                    other => return Err(unsupported(&inner, other)),
                };
                let token = self
                    .generate_access_token(
                        &file.service_account_impersonation_url,
                        &source.value,
                        &file.delegates,
                        scope,
                    )
                    .await?;
                Ok((token, "impersonated_service_account"))
            }
            "service_account" => Ok((
                self.simple_file(json, "service_account", scope, what)
                    .await?,
                "service_account",
            )),
            "authorized_user" => Ok((
                self.simple_file(json, "authorized_user", scope, what)
                    .await?,
                "authorized_user",
            )),
            other => Err(unsupported(what, other)),
        }
    }

    async fn simple_file(
        &self,
        json: &SecretString,
        kind: &str,
        scope: &str,
        what: &str,
    ) -> Result<Token, RegistryError> {
        if kind == "service_account" {
            return self.service_account_token(json, scope, what).await;
        }
        let user: AuthorizedUser = parse(json, what)?;
        self.refresh_grant(&user, scope).await
    }

    /// The service-account JWT flow, through yup-oauth2 (against the key's own `token_uri`).
    async fn service_account_token(
        &self,
        key: &SecretString,
        scope: &str,
        what: &str,
    ) -> Result<Token, RegistryError> {
        let auth = {
            let mut slot = self.service_account.lock().await;
            match slot.as_ref() {
                Some((k, a)) if k.expose_secret() == key.expose_secret() => a.clone(),
                _ => {
                    let parsed = yup_oauth2::parse_service_account_key(key.expose_secret())
                        .map_err(|_| {
                            RegistryError::NoCredentials(format!(
                                "{what} is not a valid service-account key"
                            ))
                        })?;
                    let a = Arc::new(
                        yup_oauth2::ServiceAccountAuthenticator::builder(parsed)
                            .build()
                            .await
                            .map_err(|e| {
                                RegistryError::Unreachable(format!("oauth2 client: {e}"))
                            })?,
                    );
                    *slot = Some((key.clone(), a.clone()));
                    a
                }
            }
        };
        // yup-oauth2 sets no timeout of its own (and its optional one ends at the response head,
        // not the body): a token endpoint that stalls would hold every scan of the registry.
        let token = tokio::time::timeout(self.timeout, auth.token(&[scope]))
            .await
            .map_err(|_| RegistryError::Unreachable("Google token endpoint: timed out".into()))?
            .map_err(oauth_error)?;
        let lifetime = token
            .expiration_time()
            .map(|t| t.unix_timestamp())
            .and_then(|t| u64::try_from(t).ok())
            .map(|t| seconds_until(SystemTime::UNIX_EPOCH + Duration::from_secs(t)))
            .unwrap_or(Duration::from_secs(3600));
        let value = token.token().ok_or_else(|| {
            RegistryError::Protocol("the token endpoint returned no access token".into())
        })?;
        Token::new(value.to_owned(), lifetime)
    }

    /// OAuth2's refresh-token grant (RFC 6749 §6), as google-auth sends it for `authorized_user`:
    /// `grant_type=refresh_token`, `client_id`, `client_secret`, `refresh_token`, POSTed as a form
    /// to the file's `token_uri` (default `https://oauth2.googleapis.com/token`), plus `scope`
    /// (§6: "MUST NOT include any scope not originally granted"): without it the token would
    /// carry every scope the user consented to at `gcloud auth application-default login`
    /// (`cloud-platform` by default), and every realm that sees it could use all of them.
    async fn refresh_grant(
        &self,
        user: &AuthorizedUser,
        scope: &str,
    ) -> Result<Token, RegistryError> {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &user.client_id)
            .append_pair("client_secret", &user.client_secret)
            .append_pair("refresh_token", &user.refresh_token)
            .append_pair("scope", scope)
            .finish();
        let uri = user.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
        let response = self
            .http
            .post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable("Google token endpoint", e))?;
        // OAuth2 answers a revoked or mismatched grant with 400 `invalid_grant` (RFC 6749 §5.2).
        let parsed: OAuthToken = answer(response, "Google token endpoint", true).await?;
        Token::new(
            parsed.access_token,
            Duration::from_secs(parsed.expires_in.unwrap_or(3600)),
        )
    }

    /// The metadata server's token for the attached service account (on GKE with Workload
    /// Identity, the Kubernetes service account's Google identity):
    /// `GET http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token`
    /// with `Metadata-Flavor: Google`, answering `{"access_token", "expires_in", "token_type"}`
    /// (https://cloud.google.com/compute/docs/access/authenticate-workloads). Google's libraries
    /// take the host from `GCE_METADATA_HOST` when it is set.
    async fn metadata_token(&self, host: &str, scope: &str) -> Result<Token, RegistryError> {
        let mut url = Url::parse(&format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
        ))
        .map_err(|_| {
            RegistryError::NoCredentials(format!("GCE_METADATA_HOST {host:?} is not a host"))
        })?;
        url.query_pairs_mut().append_pair("scopes", scope);
        let response = self
            .metadata
            .get(url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| {
                let reason = match super::http::transport_error(e) {
                    RegistryError::Unreachable(r) => r,
                    other => other.to_string(),
                };
                RegistryError::NoCredentials(format!(
                    "metadata server unreachable at {host} ({reason}); off Google Cloud, set \
                     json_key, GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth \
                     application-default login`"
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            // GKE answers 404 when the Kubernetes service account is bound to no Google one.
            return Err(RegistryError::NoCredentials(format!(
                "metadata server answered HTTP {} for the default service account's token",
                status.as_u16()
            )));
        }
        let parsed: OAuthToken = answer(response, "metadata server", false).await?;
        Token::new(
            parsed.access_token,
            Duration::from_secs(parsed.expires_in.unwrap_or(3600)),
        )
    }

    /// The IAM Credentials API's `projects.serviceAccounts.generateAccessToken`
    /// (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken):
    /// `POST https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:generateAccessToken`,
    /// authorized by the caller's (cloud-platform) token, with the body
    /// `{"delegates": [string], "scope": [string], "lifetime": string}` ("scope: Required [...] At
    /// least one value required"; "lifetime: [...] By default, the maximum allowed value is 1
    /// hour"), answering `{"accessToken": string, "expireTime": string}` (RFC 3339). The caller
    /// needs `iam.serviceAccounts.getAccessToken` (Service Account Token Creator) on the target.
    async fn generate_access_token(
        &self,
        url: &str,
        source: &SecretString,
        delegates: &[String],
        scope: &str,
    ) -> Result<Token, RegistryError> {
        let mut body = serde_json::json!({ "scope": [scope], "lifetime": IMPERSONATED_LIFETIME });
        if !delegates.is_empty() {
            body["delegates"] = delegates.into();
        }
        let mut bearer =
            header::HeaderValue::from_str(&format!("Bearer {}", source.expose_secret()))
                .map_err(|_| RegistryError::Protocol("malformed source access token".into()))?;
        bearer.set_sensitive(true);
        let response = self
            .http
            .post(url)
            .header(header::AUTHORIZATION, bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| unreachable("IAM Credentials API", e))?;
        let parsed: IamToken = answer(response, "IAM Credentials API", false).await?;
        let expires = humantime::parse_rfc3339_weak(&parsed.expire_time).map_err(|_| {
            RegistryError::Protocol("IAM Credentials API: expireTime is not RFC 3339".into())
        })?;
        Token::new(parsed.access_token, seconds_until(expires))
    }
}

/// "…, impersonating sa@…" when there is a target.
fn with_target(described: String, target: Option<&String>) -> String {
    match target {
        Some(email) => format!("{described}, impersonating {email}"),
        None => described,
    }
}

fn seconds_until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

#[derive(Deserialize)]
struct OAuthToken {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IamToken {
    access_token: String,
    expire_time: String,
}

/// gcloud's and google-auth's `authorized_user` file.
#[derive(Deserialize)]
struct AuthorizedUser {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    token_uri: Option<String>,
}

/// `impersonated_service_account`, as gcloud writes it.
#[derive(Deserialize)]
struct ImpersonatedFile {
    service_account_impersonation_url: String,
    source_credentials: serde_json::Value,
    #[serde(default)]
    delegates: Vec<String>,
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn read_credentials(path: &Path, what: &str) -> Result<SecretString, RegistryError> {
    let bytes = std::fs::read(path).map_err(|e| {
        RegistryError::NoCredentials(format!("{what} file {}: {}", path.display(), e.kind()))
    })?;
    if bytes.len() > BODY_CAP {
        return Err(RegistryError::NoCredentials(format!(
            "{what} file {} is larger than {BODY_CAP} bytes",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map(SecretString::from)
        .map_err(|_| {
            RegistryError::NoCredentials(format!("{what} file {} is not UTF-8", path.display()))
        })
}

fn file_type(json: &SecretString, what: &str) -> Result<String, RegistryError> {
    let head: TypeOnly = parse(json, what)?;
    head.kind
        .ok_or_else(|| RegistryError::NoCredentials(format!("{what} has no \"type\"")))
}

/// Parses a credentials file. serde's messages can quote the values they choke on, so only the
/// position and a missing field's name are reported.
fn parse<T: serde::de::DeserializeOwned>(
    json: &SecretString,
    what: &str,
) -> Result<T, RegistryError> {
    serde_json::from_str(json.expose_secret()).map_err(|e| {
        let text = e.to_string();
        let detail = match text.split_once(" at line") {
            Some((m, _)) if m.starts_with("missing field") => m.to_owned(),
            _ => format!("invalid JSON at line {}, column {}", e.line(), e.column()),
        };
        RegistryError::NoCredentials(format!("{what}: {detail}"))
    })
}

fn unsupported(what: &str, kind: &str) -> RegistryError {
    RegistryError::NoCredentials(format!(
        "{what} has type {kind:?}, which regwatch does not support; use service_account, \
         authorized_user or impersonated_service_account (on GKE, Workload Identity works \
         through the metadata server with no file)"
    ))
}

fn unreachable(what: &str, e: reqwest::Error) -> RegistryError {
    match super::http::transport_error(e) {
        RegistryError::Unreachable(r) => RegistryError::Unreachable(format!("{what}: {r}")),
        other => other,
    }
}

/// Reads a token endpoint's JSON answer; 401 and 403 (and 400 where `bad_request_refuses`) mean
/// the credentials were refused.
async fn answer<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &'static str,
    bad_request_refuses: bool,
) -> Result<T, RegistryError> {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || (bad_request_refuses && status == StatusCode::BAD_REQUEST)
    {
        return Err(RegistryError::Unauthorized {
            status: status.as_u16(),
            what,
        });
    }
    if !status.is_success() {
        return Err(RegistryError::Status {
            status: status.as_u16(),
            what: what.into(),
        });
    }
    let body = super::http::read_body(response, BODY_CAP).await?;
    serde_json::from_slice(&body)
        .map_err(|_| RegistryError::Protocol(format!("{what}: the answer holds no access token")))
}

fn oauth_error(e: yup_oauth2::Error) -> RegistryError {
    match e {
        // yup-oauth2 reads the error body whatever the status: Google's outages (5xx) say
        // `internal_failure`, and RFC 6749 names `server_error` and `temporarily_unavailable`;
        // google-auth retries those three. Any other error code is a refusal.
        yup_oauth2::Error::AuthError(yup_oauth2::error::AuthError {
            error: yup_oauth2::error::AuthErrorCode::Other(code),
            ..
        }) if matches!(
            code.as_str(),
            "internal_failure" | "server_error" | "temporarily_unavailable"
        ) =>
        {
            RegistryError::Unreachable(format!("Google token endpoint: {code}"))
        }
        yup_oauth2::Error::AuthError(_) => RegistryError::Unauthorized {
            status: 401,
            what: "Google token endpoint",
        },
        yup_oauth2::Error::HttpError(e) => {
            RegistryError::Unreachable(format!("Google token endpoint: {e}"))
        }
        yup_oauth2::Error::HttpClientError(e) => {
            RegistryError::Unreachable(format!("Google token endpoint: {e}"))
        }
        other => RegistryError::Protocol(format!("Google token endpoint: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_never_quote_values() {
        // serde would say: invalid type: string "s3cr3t", expected u64.
        let json: SecretString = r#"{"client_id": "c", "client_secret": "s", "refresh_token": "r", "expires_in": "s3cr3t"}"#.into();
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            expires_in: u64,
        }
        let e = parse::<Strict>(&json, "f").err().unwrap().to_string();
        assert!(!e.contains("s3cr3t") && e.contains("line 1"), "{e}");
        let json: SecretString = r#"{"type": "authorized_user", "client_id": "c"}"#.into();
        let e = parse::<AuthorizedUser>(&json, "f")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing field `client_secret`"), "{e}");
    }
}
