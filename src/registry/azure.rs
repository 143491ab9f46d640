//! Entra ID (Azure AD) access tokens for ACR's resource, from the identities an Azure workload has:
//! an app registration's client secret, a federated token (AKS workload identity), or a managed
//! identity (`IDENTITY_ENDPOINT` where the platform sets it, else IMDS). Three small HTTP flows on
//! the project's reqwest client; `docs/src/dependencies.md` says why not `azure_identity`.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::RegistryError;
use super::auth::jwt_lifetime;
use crate::config::AcrConfig;

/// ACR's resource (application ID URI). Tokens with this audience are what ACR's exchange accepts
/// even when "authentication as ARM" is disabled on the registry ("Microsoft Entra tokens with
/// the audience https://containerregistry.azure.net", learn.microsoft.com,
/// container-registry-disable-authentication-as-arm).
pub const ACR_RESOURCE: &str = "https://containerregistry.azure.net";
/// The public cloud's authority; `AZURE_AUTHORITY_HOST` overrides it (sovereign clouds, and what
/// the AKS webhook injects).
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// IMDS; `AZURE_POD_IDENTITY_AUTHORITY_HOST` overrides it, as Azure's own SDKs honour it.
const IMDS: &str = "http://169.254.169.254";
/// RFC 7523's assertion type, which the client credentials flow's third case requires.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// IMDS is link-local: where it exists it answers in milliseconds, so a longer wait means none.
const IMDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Token bodies are small.
const BODY_CAP: usize = 64 * 1024;

/// Where an Entra token comes from, chosen once from the config and the environment.
#[derive(Debug)]
pub enum Flow {
    /// `tenant_id` + `client_id` + `client_secret`.
    ClientSecret {
        token_url: Url,
        client_id: String,
        secret: SecretString,
        tenant: String,
    },
    /// A federated token file (AKS workload identity), re-read at every grant: it rotates.
    Workload {
        token_url: Url,
        client_id: String,
        token_file: PathBuf,
        tenant: String,
    },
    /// App Service, Container Apps, Functions: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`.
    IdentityEndpoint {
        endpoint: Url,
        header: SecretString,
        client_id: Option<String>,
    },
    /// The VM's (or node's) Instance Metadata Service.
    Imds {
        endpoint: Url,
        client_id: Option<String>,
    },
}

/// An Entra access token.
pub struct EntraToken {
    /// The bearer token.
    pub value: SecretString,
    /// How long it is valid from now.
    pub lifetime: Duration,
}

/// What a grant gave.
pub enum Minted {
    /// A token.
    Token(EntraToken),
    /// IMDS is not there, or has no identity for us: why, in a few words.
    Absent(&'static str),
}

/// The environment variables read, by name; a closure so tests of the choice need no process env.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Flow {
    /// Chooses the flow: client secret (config) > workload identity (`AZURE_FEDERATED_TOKEN_FILE`)
    /// > `IDENTITY_ENDPOINT` > IMDS. `Err` names the flow and says what is missing.
    pub fn choose(
        config: &AcrConfig,
        env: Env<'_>,
        insecure: bool,
    ) -> Result<Flow, (&'static str, String)> {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(secret) = &config.client_secret {
            let tenant = config.tenant_id.clone().unwrap_or_default();
            return Ok(Flow::ClientSecret {
                token_url: token_url(var("AZURE_AUTHORITY_HOST"), &tenant, insecure)
                    .map_err(|e| ("client secret", e))?,
                client_id: config.client_id.clone().unwrap_or_default(),
                secret: secret.clone(),
                tenant,
            });
        }
        if let Some(file) = var("AZURE_FEDERATED_TOKEN_FILE") {
            let fail = |e: String| ("workload identity", e);
            let client_id = config
                .client_id
                .clone()
                .or_else(|| var("AZURE_CLIENT_ID"))
                .ok_or_else(|| {
                    fail("workload identity needs AZURE_CLIENT_ID (or client_id)".into())
                })?;
            let tenant = config
                .tenant_id
                .clone()
                .or_else(|| var("AZURE_TENANT_ID"))
                .ok_or_else(|| {
                    fail("workload identity needs AZURE_TENANT_ID (or tenant_id)".into())
                })?;
            return Ok(Flow::Workload {
                token_url: token_url(var("AZURE_AUTHORITY_HOST"), &tenant, insecure)
                    .map_err(fail)?,
                client_id,
                token_file: file.into(),
                tenant,
            });
        }
        if let Some(endpoint) = var("IDENTITY_ENDPOINT") {
            let name = "managed identity (IDENTITY_ENDPOINT)";
            let header = var("IDENTITY_HEADER").ok_or((
                name,
                "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (Azure Arc's flow is not supported)"
                    .to_owned(),
            ))?;
            let mut endpoint = Url::parse(&endpoint)
                .map_err(|e| (name, format!("IDENTITY_ENDPOINT is not a URL: {e}")))?;
            // "GET {IDENTITY_ENDPOINT}?resource=...&api-version=2019-08-01", with the optional
            // `client_id` of a user-assigned identity (learn.microsoft.com, App Service and
            // Container Apps managed identity, "REST endpoint reference").
            query(&mut endpoint, "2019-08-01", config.client_id.as_deref());
            return Ok(Flow::IdentityEndpoint {
                endpoint,
                header: header.into(),
                client_id: config.client_id.clone(),
            });
        }
        let base = var("AZURE_POD_IDENTITY_AUTHORITY_HOST").unwrap_or_else(|| IMDS.into());
        let mut endpoint = Url::parse(base.trim_end_matches('/'))
            .and_then(|u| u.join("/metadata/identity/oauth2/token"))
            .map_err(|e| {
                (
                    "managed identity",
                    format!("IMDS address is not a URL: {e}"),
                )
            })?;
        // "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=..." with header
        // `Metadata: true`, and `client_id` for a user-assigned identity (learn.microsoft.com,
        // "How to use managed identities for Azure resources on an Azure VM to acquire an access
        // token").
        query(&mut endpoint, "2018-02-01", config.client_id.as_deref());
        Ok(Flow::Imds {
            endpoint,
            client_id: config.client_id.clone(),
        })
    }

    /// What `regwatch check` calls this flow.
    pub fn describe(&self) -> &'static str {
        match self {
            Flow::ClientSecret { .. } => "client secret",
            Flow::Workload { .. } => "workload identity",
            Flow::IdentityEndpoint { .. } => "managed identity (IDENTITY_ENDPOINT)",
            Flow::Imds { .. } => "managed identity",
        }
    }

    /// The Entra tenant, where the flow knows it.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Flow::ClientSecret { tenant, .. } | Flow::Workload { tenant, .. } => Some(tenant),
            _ => None,
        }
    }

    /// The HTTP client for this flow: no redirects (a token request goes where it was sent), and a
    /// short connect timeout for IMDS so that a host without one falls back quickly.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::Client, RegistryError> {
        let connect = match self {
            Flow::Imds { .. } => IMDS_CONNECT_TIMEOUT,
            _ => Duration::from_secs(10),
        };
        reqwest::Client::builder()
            .user_agent(concat!("regwatch/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(connect)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RegistryError::Unreachable(format!("cannot build HTTP client: {e}")))
    }

    /// Asks for a token for ACR's resource.
    pub async fn token(&self, client: &reqwest::Client) -> Result<Minted, RegistryError> {
        let scope = format!("{ACR_RESOURCE}/.default");
        match self {
            // "POST /{tenant}/oauth2/v2.0/token" with `client_id`, `scope` ("the resource
            // identifier (application ID URI) of the resource you want, affixed with the .default
            // suffix"), `client_secret`, and `grant_type` "Must be set to client_credentials"
            // (learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow,
            // first case).
            Flow::ClientSecret {
                token_url,
                client_id,
                secret,
                ..
            } => {
                let form = [
                    ("client_id", client_id.as_str()),
                    ("scope", &scope),
                    ("client_secret", secret.expose_secret()),
                    ("grant_type", "client_credentials"),
                ];
                let sent = client.post(token_url.clone()).form(&form).send().await;
                entra_answer(sent, "the client secret").await
            }
            // The same endpoint, third case: `client_assertion_type` =
            // urn:ietf:params:oauth:client-assertion-type:jwt-bearer and `client_assertion`, "a
            // JWT ... that your application gets from another identity provider ... like
            // Kubernetes". The kubelet rotates the projected file, so it is read at every grant.
            Flow::Workload {
                token_url,
                client_id,
                token_file,
                ..
            } => {
                let assertion: SecretString = match tokio::fs::read_to_string(token_file).await {
                    Ok(t) if t.trim().is_empty() => {
                        return Err(RegistryError::NoCredentials(
                            "federated token file is empty".into(),
                        ));
                    }
                    Ok(t) => t.trim().to_owned().into(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(RegistryError::NoCredentials(
                            "federated token file not found".into(),
                        ));
                    }
                    Err(e) => {
                        return Err(RegistryError::NoCredentials(format!(
                            "cannot read the federated token file: {}",
                            e.kind()
                        )));
                    }
                };
                let form = [
                    ("client_id", client_id.as_str()),
                    ("scope", &scope),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", assertion.expose_secret()),
                    ("grant_type", "client_credentials"),
                ];
                let sent = client.post(token_url.clone()).form(&form).send().await;
                entra_answer(sent, "the federated token").await
            }
            // The header "mitigates server-side request forgery (SSRF) attacks".
            Flow::IdentityEndpoint {
                endpoint, header, ..
            } => {
                let mut value = reqwest::header::HeaderValue::from_str(header.expose_secret())
                    .map_err(|_| {
                        RegistryError::NoCredentials("IDENTITY_HEADER is not a header value".into())
                    })?;
                value.set_sensitive(true);
                let sent = client
                    .get(endpoint.clone())
                    .header("X-IDENTITY-HEADER", value)
                    .send()
                    .await;
                let response = sent.map_err(|_| {
                    RegistryError::NoCredentials("managed identity endpoint unreachable".into())
                })?;
                managed_answer(response, "managed identity endpoint")
                    .await?
                    .map_or_else(
                        || {
                            Err(RegistryError::NoCredentials(
                                "the managed identity endpoint has no such identity".into(),
                            ))
                        },
                        |t| Ok(Minted::Token(t)),
                    )
            }
            Flow::Imds { endpoint, .. } => {
                let sent = client
                    .get(endpoint.clone())
                    .header("Metadata", "true")
                    .send()
                    .await;
                let Ok(response) = sent else {
                    return Ok(Minted::Absent("metadata server unreachable"));
                };
                // Another cloud's metadata server on the same address answers, but not as IMDS.
                let azure = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.contains("json"));
                if !azure || response.status() == StatusCode::NOT_FOUND {
                    return Ok(Minted::Absent("no Azure metadata server"));
                }
                Ok(managed_answer(response, "metadata server").await?.map_or(
                    Minted::Absent("no managed identity on this host"),
                    Minted::Token,
                ))
            }
        }
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`; the authority must be https (or http with `insecure`).
fn token_url(authority: Option<String>, tenant: &str, insecure: bool) -> Result<Url, String> {
    let authority = authority.unwrap_or_else(|| DEFAULT_AUTHORITY.into());
    let base =
        Url::parse(&authority).map_err(|e| format!("AZURE_AUTHORITY_HOST is not a URL: {e}"))?;
    match base.scheme() {
        "https" => {}
        "http" if insecure => {}
        _ => return Err("AZURE_AUTHORITY_HOST must be https://".into()),
    }
    let tenant: String = url::form_urlencoded::byte_serialize(tenant.as_bytes()).collect();
    Url::parse(&format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    ))
    .map_err(|e| format!("token URL: {e}"))
}

fn query(url: &mut Url, api_version: &str, client_id: Option<&str>) {
    let mut q = url.query_pairs_mut();
    q.append_pair("api-version", api_version)
        .append_pair("resource", ACR_RESOURCE);
    if let Some(id) = client_id {
        q.append_pair("client_id", id);
    }
}

/// The fields of a token answer that matter here. Entra's v2 endpoint sends `expires_in` as a
/// number; IMDS sends `expires_in` and `expires_on` as strings; App Service sends `expires_on`.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    expires_on: Option<serde_json::Value>,
}

/// Entra's error body: `error` is a code such as `invalid_client`; the description is not kept.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
}

fn seconds(v: &Option<serde_json::Value>) -> Option<u64> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn read(response: reqwest::Response) -> Result<Vec<u8>, RegistryError> {
    super::http::read_body(response, BODY_CAP).await
}

fn parse_token(body: &[u8], what: &str) -> Result<EntraToken, RegistryError> {
    let answer: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| RegistryError::Protocol(format!("{what}: token answer is not JSON: {e}")))?;
    let value = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| RegistryError::Protocol(format!("{what}: no access_token")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let lifetime = seconds(&answer.expires_in)
        .or_else(|| seconds(&answer.expires_on).map(|on| on.saturating_sub(now)))
        .map(Duration::from_secs)
        .or_else(|| jwt_lifetime(&value))
        .unwrap_or(Duration::from_secs(300));
    Ok(EntraToken {
        value: value.into(),
        lifetime,
    })
}

/// The v2 token endpoint's answer. A 4xx is Entra refusing what was presented: invalid
/// credentials (401/403), like a registry's refusal, with Entra's error code logged.
async fn entra_answer(
    sent: Result<reqwest::Response, reqwest::Error>,
    presented: &str,
) -> Result<Minted, RegistryError> {
    let response = sent.map_err(|e| {
        RegistryError::NoCredentials(format!(
            "Entra ID unreachable: {}",
            super::http::transport_error(e)
        ))
    })?;
    let status = response.status();
    let body = read(response).await?;
    if status.is_success() {
        return parse_token(&body, "Entra ID").map(Minted::Token);
    }
    if status.is_client_error() {
        let code = serde_json::from_slice::<ErrorAnswer>(&body)
            .ok()
            .and_then(|e| e.error)
            .unwrap_or_default();
        tracing::warn!(status = status.as_u16(), error = %code, "Entra ID refused {presented}");
        return Err(RegistryError::Unauthorized {
            status: status.as_u16(),
            what: "Entra ID token endpoint",
        });
    }
    Err(RegistryError::NoCredentials(format!(
        "Entra ID token endpoint answered {status}"
    )))
}

/// A managed-identity endpoint's answer: `None` when it has no identity for the request (400).
async fn managed_answer(
    response: reqwest::Response,
    what: &'static str,
) -> Result<Option<EntraToken>, RegistryError> {
    let status = response.status();
    let body = read(response).await?;
    match status {
        s if s.is_success() => parse_token(&body, what).map(Some),
        StatusCode::BAD_REQUEST => Ok(None),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Unauthorized {
            status: status.as_u16(),
            what,
        }),
        s => Err(RegistryError::NoCredentials(format!("{what} answered {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn precedence_secret_then_workload_then_endpoint_then_imds() {
        let all = env(&[
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            ("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        let secret = AcrConfig {
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            client_secret: Some("s".to_owned().into()),
        };
        let f = Flow::choose(&secret, &all, false).unwrap();
        assert_eq!(f.describe(), "client secret");
        let Flow::ClientSecret { token_url, .. } = f else {
            panic!()
        };
        assert_eq!(
            token_url.as_str(),
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        );
        let none = AcrConfig::default();
        assert_eq!(
            Flow::choose(&none, &all, false).unwrap().describe(),
            "workload identity"
        );
        let endpoint = env(&[
            ("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        let Flow::IdentityEndpoint { endpoint, .. } =
            Flow::choose(&none, &endpoint, false).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            endpoint.as_str(),
            "http://localhost:42356/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fcontainerregistry.azure.net"
        );
        let user = AcrConfig {
            client_id: Some("u".into()),
            ..AcrConfig::default()
        };
        let Flow::Imds { endpoint, .. } = Flow::choose(&user, &env(&[]), false).unwrap() else {
            panic!()
        };
        assert_eq!(
            endpoint.as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fcontainerregistry.azure.net&client_id=u"
        );
    }

    #[test]
    fn workload_identity_config_overrides_env_and_authority_must_be_https() {
        let e = env(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ("AZURE_CLIENT_ID", "env-client"),
            ("AZURE_TENANT_ID", "env-tenant"),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
        ]);
        let config = AcrConfig {
            client_id: Some("cfg-client".into()),
            ..AcrConfig::default()
        };
        let Flow::Workload {
            token_url,
            client_id,
            ..
        } = Flow::choose(&config, &e, false).unwrap()
        else {
            panic!()
        };
        assert_eq!(client_id, "cfg-client");
        assert_eq!(
            token_url.as_str(),
            "https://login.microsoftonline.us/env-tenant/oauth2/v2.0/token"
        );
        let http = env(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_AUTHORITY_HOST", "http://127.0.0.1:1"),
        ]);
        assert!(Flow::choose(&config, &http, false).is_err());
        assert!(Flow::choose(&config, &http, true).is_ok());
        let no_tenant = env(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ("AZURE_CLIENT_ID", "c"),
        ]);
        let (name, why) = Flow::choose(&AcrConfig::default(), &no_tenant, false).unwrap_err();
        assert_eq!(name, "workload identity");
        assert!(why.contains("AZURE_TENANT_ID"), "{why}");
    }
}
