//! Google Container Registry and Artifact Registry: the Distribution API, authenticated with an
//! OAuth2 access token from a service-account key (yup-oauth2, against the key's own `token_uri`),
//! presented as Basic `oauth2accesstoken:<token>` to the registry's token realm. Google's
//! `tags/list` carries digests and upload times, so watching needs no HEADs (see `oci.rs`).

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;
use yup_oauth2::authenticator::DefaultAuthenticator;

use super::RegistryError;
use super::auth::{Credential, CredentialSource};
use crate::config::{Credentials, GcrConfig};

/// The least OAuth2 scope that reading a registry needs. Google documents it for both products:
/// Container Registry, "For docker pull and docker search, the access token must use the
/// devstorage.read_only scope" (cloud.google.com/container-registry/docs/advanced-authentication);
/// Artifact Registry, "To pull container images from Artifact Registry repositories, [...] ensure
/// the read-only access scope is set for Cloud Storage storage buckets"
/// (cloud.google.com/artifact-registry/docs/integrate-compute). `cloud-platform` would hand every
/// realm that sees the token read-write access to all of the account's Google Cloud APIs.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";

/// The full repository path for a name as users write it: `app` is `<project_id>/app`.
pub fn qualify(project_id: &str, name: &str) -> String {
    if name.starts_with(&format!("{project_id}/")) {
        name.to_owned()
    } else {
        format!("{project_id}/{name}")
    }
}

/// Checks at config load that `json` is a service-account key.
pub fn check_key(json: &SecretString) -> Result<(), String> {
    yup_oauth2::parse_service_account_key(json.expose_secret())
        .map(|_| ())
        .map_err(|e| format!("not a service-account key: {e}"))
}

/// Access tokens for a service account; yup-oauth2 caches them and refreshes them before expiry.
pub struct GoogleCredentials {
    key: SecretString,
    authenticator: OnceCell<DefaultAuthenticator>,
}

impl GoogleCredentials {
    /// Credentials from the key in `config`.
    pub fn new(config: &GcrConfig) -> Self {
        GoogleCredentials {
            key: config.json_key.clone(),
            authenticator: OnceCell::new(),
        }
    }
}

#[async_trait]
impl CredentialSource for GoogleCredentials {
    async fn credential(&self) -> Result<Credential, RegistryError> {
        let auth = self
            .authenticator
            .get_or_try_init(|| async {
                let key = yup_oauth2::parse_service_account_key(self.key.expose_secret())
                    .map_err(|e| RegistryError::Protocol(format!("service-account key: {e}")))?;
                yup_oauth2::ServiceAccountAuthenticator::builder(key)
                    .build()
                    .await
                    .map_err(|e| RegistryError::Unreachable(format!("oauth2 client: {e}")))
            })
            .await?;
        let token = auth.token(&[SCOPE]).await.map_err(oauth_error)?;
        let token = token.token().ok_or_else(|| {
            RegistryError::Protocol("the token endpoint returned no access token".into())
        })?;
        Ok(Credential::Basic(Credentials {
            username: "oauth2accesstoken".into(),
            password: token.to_owned().into(),
        }))
    }

    fn describe(&self) -> String {
        "service-account key".into()
    }
}

fn oauth_error(e: yup_oauth2::Error) -> RegistryError {
    match e {
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
