//! Google Container Registry and Artifact Registry: the Distribution API, authenticated with a
//! Google OAuth2 access token (see `google.rs`: a service-account key, or Application Default
//! Credentials, optionally impersonating another service account), presented as Basic
//! `oauth2accesstoken:<token>` to the registry's token realm. Google's `tags/list` carries digests
//! and upload times, so watching needs no HEADs (see `oci.rs`).

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::RegistryError;
use super::auth::{Credential, CredentialSource};
use super::google::{AdcEnv, GoogleTokens, Impersonation, Source};
use crate::config::{Credentials, GcrConfig};

/// The full repository path for a name as users write it: `app` is `<project_id>/app`.
pub fn qualify(project_id: &str, name: &str) -> String {
    if name.starts_with(&format!("{project_id}/")) {
        name.to_owned()
    } else {
        format!("{project_id}/{name}")
    }
}

/// Whether `host` is a Google registry, the only place a Google token may go: `gcr.io`, a
/// regional `*.gcr.io` (`eu.gcr.io`), or Artifact Registry's `LOCATION-docker.pkg.dev`.
pub fn is_google_registry_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let one_label =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    host == "gcr.io"
        || host.strip_suffix(".gcr.io").is_some_and(one_label)
        || host.strip_suffix("-docker.pkg.dev").is_some_and(one_label)
}

/// Checks at config load that `json` is a service-account key.
pub fn check_key(json: &SecretString) -> Result<(), String> {
    yup_oauth2::parse_service_account_key(json.expose_secret())
        .map(|_| ())
        .map_err(|e| format!("not a service-account key: {e}"))
}

/// Checks at config load that `email` names a service account (it goes into the IAM API's path).
pub fn check_service_account_email(email: &str) -> Result<(), String> {
    let valid = email.split_once('@').is_some_and(|(name, domain)| {
        !name.is_empty()
            && domain.ends_with(".gserviceaccount.com")
            && email
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.@_".contains(&b))
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{email:?} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)"
        ))
    }
}

/// The registry's credential: a Google access token as the password of `oauth2accesstoken`.
pub struct GoogleCredentials {
    tokens: GoogleTokens,
}

impl GoogleCredentials {
    /// Credentials as `config` says: its key, else Application Default Credentials from this
    /// process's environment.
    pub fn new(config: &GcrConfig, timeout: std::time::Duration) -> Result<Self, RegistryError> {
        let source = match &config.json_key {
            Some(key) => Source::Key(key.clone()),
            None => Source::Adc(AdcEnv::from_process()),
        };
        let impersonate = config
            .impersonate_service_account
            .as_ref()
            .map(|email| Impersonation {
                email: email.clone(),
                endpoint: config.iam_endpoint.clone(),
            });
        Ok(GoogleCredentials {
            tokens: GoogleTokens::new(source, impersonate, timeout)?,
        })
    }
}

#[async_trait]
impl CredentialSource for GoogleCredentials {
    async fn credential(&self) -> Result<Credential, RegistryError> {
        Ok(Credential::Basic(Credentials {
            username: "oauth2accesstoken".into(),
            password: self.tokens.token().await?,
        }))
    }

    fn describe(&self) -> String {
        self.tokens.describe()
    }

    fn refused(&self) {
        self.tokens.forget();
    }
}
