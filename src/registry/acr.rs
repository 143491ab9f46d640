//! Azure Container Registry. The registry speaks the Distribution API; what is ACR's own is how an
//! Entra ID identity becomes registry credentials (Azure/acr docs/AAD-OAuth.md):
//! 1. an Entra access token for ACR's resource (see `azure`);
//! 2. "Call `POST /oauth2/exchange` presenting the AAD access token ... The service will return you
//!    an ACR refresh token": done here;
//! 3. "Call `POST /oauth2/token` presenting the ACR refresh token. The service will return you an
//!    ACR access token": the realm ACR names in its challenges, done by the `Authenticator` with
//!    the [`Credential::RefreshToken`] this source returns.
//!
//! Both tokens live in a [`CredentialCache`]: renewed shortly before they expire, minted once for
//! all the scans that need them at the same moment, and dropped on a refusal only once older than
//! the refusal grace, so N repositories the identity may not pull cost one Entra grant, not N.
//! Username/password (admin user, service principal) stay as they were.
//!
//! Without any identity (no keys, no workload identity, no `IDENTITY_ENDPOINT`), IMDS is asked,
//! with a 1 s connect timeout; where it is absent or has no identity for us, requests go
//! anonymously, which works for registries with anonymous pull enabled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::RegistryError;
use super::auth::{Credential, CredentialSource, jwt_lifetime};
use super::azure::{Flow, Minted};
use super::credential_cache::{CredentialCache, MAX_LIFETIME};
use super::http::{Transport, expect_json, read_body};
use crate::config::{AcrConfig, RegistryConfig};

/// The login-server suffixes of Azure's clouds, as azure-cli's cloud definitions name them
/// (`acr_login_server_endpoint`): public, China (21Vianet) and US Government. Azure Germany, now
/// closed, never had one.
pub const LOGIN_SERVER_SUFFIXES: [&str; 3] = [".azurecr.io", ".azurecr.cn", ".azurecr.us"];

/// Whether `host` is an ACR login server (`NAME.azurecr.io` or a sovereign cloud's), the only
/// place an Entra token or ACR credentials may go.
pub fn is_azure_registry_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    LOGIN_SERVER_SUFFIXES.iter().any(|suffix| {
        host.strip_suffix(suffix).is_some_and(|name| {
            // Geo-replicas and data endpoints add labels (`NAME.REGION.data.azurecr.io`).
            !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        })
    })
}

/// The credential source for an ACR entry: keys set in the entry (username/password, a client
/// secret) win; then `docker_config` (e.g. the refresh token `az acr login` stores as
/// `identitytoken`); then the ambient Entra identity.
pub fn source(
    config: &RegistryConfig,
    acr: &AcrConfig,
) -> Result<Arc<dyn CredentialSource>, RegistryError> {
    if let Some(c) = &config.credentials {
        return Ok(Arc::new(c.clone()));
    }
    if acr.client_secret.is_none()
        && let Some(docker) = super::docker_config::DockerConfigSource::for_registry(config)
    {
        return Ok(Arc::new(docker));
    }
    let env = |k: &str| std::env::var(k).ok();
    Ok(Arc::new(AcrCredentials::new(config, acr, &env)?))
}

/// Entra ID identity exchanged for ACR refresh tokens.
pub struct AcrCredentials {
    flow: Result<Flow, (&'static str, String)>,
    client: reqwest::Client,
    /// For the exchange, which goes to the registry itself: its limiter, retries and metrics.
    transport: Transport,
    exchange_url: Url,
    /// The login server's name, ACR's `service`.
    service: String,
    /// The Entra access token; `None` where IMDS found no identity (requests go anonymously
    /// until the registry refuses that).
    entra: CredentialCache<(), Option<SecretString>>,
    /// What the realm is shown: the ACR refresh token exchanged for the Entra one, or nothing.
    refresh: CredentialCache<(), Credential>,
    /// IMDS gave a token once: from then on its absence is a failure, not "no identity here".
    imds_answered: AtomicBool,
    /// The last credential minted was anonymous, for `describe`.
    anonymous: AtomicBool,
}

#[derive(Deserialize)]
struct ExchangeAnswer {
    refresh_token: Option<String>,
}

impl AcrCredentials {
    /// The source for one entry; `env` reads the environment the platform injected.
    pub fn new(
        config: &RegistryConfig,
        acr: &AcrConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, RegistryError> {
        let flow = Flow::choose(acr, env, config.insecure);
        let client = match &flow {
            Ok(f) => f.client(config.request_timeout)?,
            Err(_) => reqwest::Client::new(),
        };
        let exchange_url = config
            .url
            .join("/oauth2/exchange")
            .map_err(|e| RegistryError::Protocol(format!("exchange URL: {e}")))?;
        Ok(AcrCredentials {
            flow,
            client,
            transport: Transport::new(config)?,
            exchange_url,
            service: config.host.clone(),
            entra: CredentialCache::new(),
            refresh: CredentialCache::new(),
            imds_answered: AtomicBool::new(false),
            anonymous: AtomicBool::new(false),
        })
    }

    /// An Entra token for ACR's resource, or `None` where IMDS has no identity and none was named.
    async fn entra_token(
        &self,
        flow: &Flow,
    ) -> Result<(Option<SecretString>, Duration), RegistryError> {
        match flow.token(&self.client).await? {
            Minted::Token(t) => {
                self.imds_answered.store(true, Ordering::Relaxed);
                Ok((Some(t.value), t.lifetime))
            }
            Minted::Absent(why) => {
                // A named (user-assigned) identity that is not there is a mistake to report;
                // only "no identity configured, none found" may mean anonymous pull.
                let named = matches!(
                    flow,
                    Flow::Imds {
                        client_id: Some(_),
                        ..
                    }
                );
                if self.imds_answered.load(Ordering::Relaxed) || named {
                    return Err(RegistryError::NoCredentials(why.into()));
                }
                tracing::info!(
                    reason = why,
                    "no Azure managed identity here; ACR requests go anonymously"
                );
                Ok((None, MAX_LIFETIME))
            }
        }
    }

    /// An ACR refresh token exchanged for the Entra token, or anonymous without an identity.
    async fn refresh_token(&self, flow: &Flow) -> Result<(Credential, Duration), RegistryError> {
        let entra = self.entra.get(&(), || self.entra_token(flow)).await?;
        self.anonymous.store(entra.is_none(), Ordering::Relaxed);
        let Some(entra) = entra else {
            return Ok((Credential::Anonymous, MAX_LIFETIME));
        };
        let refresh = self.exchange(flow, &entra).await?;
        // ACR refresh tokens are JWTs; without a readable `exp`, trust it as long as the Entra
        // token it came from.
        let lifetime = jwt_lifetime(refresh.expose_secret())
            .or_else(|| jwt_lifetime(entra.expose_secret()))
            .unwrap_or(Duration::from_secs(300));
        Ok((Credential::RefreshToken(refresh), lifetime))
    }

    /// `POST <login server>/oauth2/exchange` with a form of `grant_type` (`access_token`),
    /// `service` ("must indicate the name of your Azure container registry"), `tenant` ("the AAD
    /// tenant associated to the AAD credentials") and `access_token`; the answer is
    /// `{"refresh_token":"eyJ..."}` (Azure/acr docs/AAD-OAuth.md).
    async fn exchange(
        &self,
        flow: &Flow,
        entra: &SecretString,
    ) -> Result<SecretString, RegistryError> {
        // A managed identity's tenant is the one its token names (`tid`).
        let tenant = flow
            .tenant()
            .map(str::to_owned)
            .or_else(|| tenant_claim(entra.expose_secret()));
        let mut form = vec![
            ("grant_type", "access_token"),
            ("service", self.service.as_str()),
            ("access_token", entra.expose_secret()),
        ];
        if let Some(t) = &tenant {
            form.push(("tenant", t));
        }
        let response = self
            .transport
            .send(|| {
                self.transport
                    .no_redirect_client()
                    .post(self.exchange_url.clone())
                    .form(&form)
            })
            .await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The Entra token is not good for this registry: mint a new one next time, unless it
            // is so young that a new one would be refused the same.
            self.entra.refused(&());
            return Err(RegistryError::Unauthorized {
                status: status.as_u16(),
                what: "ACR token exchange",
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                status: status.as_u16(),
                what: "ACR token exchange".into(),
            });
        }
        expect_json(&response)?;
        let body = read_body(response, 64 * 1024).await?;
        let answer: ExchangeAnswer = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Protocol(format!("ACR token exchange answer is not JSON: {e}"))
        })?;
        answer
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| {
                RegistryError::Protocol("ACR token exchange gave no refresh_token".into())
            })
    }
}

/// The `tid` claim of an Entra access token, read without verifying it: ACR's exchange verifies
/// the token; this only fills in the form's `tenant`.
fn tenant_claim(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("tid")?.as_str().map(str::to_owned)
}

#[async_trait]
impl CredentialSource for AcrCredentials {
    async fn credential(&self) -> Result<Credential, RegistryError> {
        let flow = self
            .flow
            .as_ref()
            .map_err(|(_, why)| RegistryError::NoCredentials(why.clone()))?;
        self.refresh.get(&(), || self.refresh_token(flow)).await
    }

    fn describe(&self) -> String {
        match &self.flow {
            Ok(Flow::Imds { .. }) if self.anonymous.load(Ordering::Relaxed) => {
                "anonymous: no managed identity".into()
            }
            Ok(flow) => flow.describe().into(),
            Err((name, _)) => (*name).into(),
        }
    }

    fn refused(&self) {
        // The Entra token is suspect only once the refresh token made from it is old enough to
        // be dropped; both pass the refusal gate.
        if self.refresh.refused(&()) {
            self.entra.refused(&());
        }
    }
}
