//! Registry authentication: `WWW-Authenticate` parsing, Basic, and Bearer tokens fetched from the
//! realm the registry names, cached per scope in a [`CredentialCache`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Response, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::RegistryError;
use super::credential_cache::{CredentialCache, MAX_LIFETIME};
use super::http::{Transport, expect_json, read_body};
use crate::config::Credentials;

/// Token bodies are small; anything bigger is not a token.
const TOKEN_BODY_CAP: usize = 1024 * 1024;
/// The token lifetime the Docker token spec assumes when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// An authentication challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter to send back.
        service: Option<String>,
        /// Scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value. Unknown schemes and malformed values give `None`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let params = parse_params(params)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// Parses `k=v, k="quoted, \"v\""` pairs; `None` on malformed input.
fn parse_params(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let name = s[..eq].trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return None;
        }
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(rest) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = rest.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            s = &rest[end?..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_owned();
            s = &s[end..];
        }
        out.push((name.to_owned(), value));
    }
}

/// The token endpoint's answer; Docker Hub sends `token`, ACR and others `access_token`.
#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// What the registry asked for, learned from its first challenge.
#[derive(Clone)]
enum Scheme {
    /// No challenge seen yet: requests go without credentials.
    Unknown,
    Basic,
    Bearer {
        realm: Url,
        service: Option<String>,
    },
}

/// What a registry's token realm (or its Basic challenge) is shown.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A user name and password: sent as Basic to the registry or its token realm.
    Basic(Credentials),
    /// An OAuth2 refresh token (ACR's exchanged token, a docker config's `identitytoken`): POSTed to
    /// the token realm as `grant_type=refresh_token`, per the Docker token spec's OAuth2 flow.
    RefreshToken(SecretString),
    /// None: an ambient source found no identity here (no Azure metadata server, say), so the
    /// request goes without credentials, as with no source at all (anonymous pull).
    Anonymous,
}

/// Where a registry's credentials come from: fixed, or minted on demand (cloud identities,
/// credential helpers).
#[async_trait]
pub trait CredentialSource: Send + Sync {
    /// The credential to use now.
    async fn credential(&self) -> Result<Credential, RegistryError>;
    /// Where the credential comes from, for `regwatch check`, e.g. "workload identity".
    fn describe(&self) -> String;
    /// The registry or its token endpoint refused the last credential: drop any cached one, so the
    /// next call mints it anew.
    fn refused(&self) {}
}

#[async_trait]
impl CredentialSource for Credentials {
    async fn credential(&self) -> Result<Credential, RegistryError> {
        Ok(Credential::Basic(self.clone()))
    }

    fn describe(&self) -> String {
        "username and password".into()
    }
}

/// Produces the `Authorization` header for a request, learning the scheme from challenges.
pub struct Authenticator {
    credentials: Option<Arc<dyn CredentialSource>>,
    /// The registry's own origin (scheme, host, port of its configured URL): the only origin whose
    /// challenges are believed, so the only one that can send credentials anywhere.
    origin: url::Origin,
    insecure: bool,
    scheme: Mutex<Scheme>,
    /// Registry tokens by scope.
    tokens: CredentialCache<String, SecretString>,
}

impl Authenticator {
    /// An authenticator with the credentials of the registry at `registry`.
    pub fn new(
        credentials: Option<Arc<dyn CredentialSource>>,
        registry: &Url,
        insecure: bool,
    ) -> Self {
        Authenticator {
            credentials,
            origin: registry.origin(),
            insecure,
            scheme: Mutex::new(Scheme::Unknown),
            tokens: CredentialCache::new(),
        }
    }

    /// Learns from a 401's `WWW-Authenticate` and drops the cached token for `scope`, which the
    /// registry just refused. Only a 401 that the registry's own origin sent (after any redirects)
    /// is believed: a challenge from elsewhere would name a realm that receives the credentials.
    pub fn on_challenge(&self, response: &Response, scope: &str) -> Result<(), RegistryError> {
        let from = response.url().origin();
        if from != self.origin {
            return Err(RegistryError::Protocol(format!(
                "401 challenge from {}, which is not the registry's origin {}; no credentials sent",
                from.ascii_serialization(),
                self.origin.ascii_serialization()
            )));
        }
        let value = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok());
        let challenge = value.and_then(parse_challenge).ok_or_else(|| {
            RegistryError::Protocol("401 without a usable WWW-Authenticate challenge".into())
        })?;
        let scheme = match challenge {
            Challenge::Basic => Scheme::Basic,
            Challenge::Bearer { realm, service, .. } => {
                let realm = Url::parse(&realm).map_err(|e| {
                    RegistryError::Protocol(format!("token realm is not a URL: {e}"))
                })?;
                match realm.scheme() {
                    "https" => {}
                    "http" if self.insecure => {}
                    _ => {
                        return Err(RegistryError::Protocol(
                            "token realm is not https (set insecure = true to allow it)".into(),
                        ));
                    }
                }
                Scheme::Bearer { realm, service }
            }
        };
        *self.scheme.lock().expect("scheme lock") = scheme;
        self.tokens.invalidate(scope);
        Ok(())
    }

    /// The `Authorization` value for a request in `scope`, fetching a token if needed.
    pub async fn header(
        &self,
        transport: &Transport,
        scope: &str,
    ) -> Result<Option<SecretString>, RegistryError> {
        let scheme = self.scheme.lock().expect("scheme lock").clone();
        match scheme {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => match &self.credentials {
                Some(c) => match c.credential().await? {
                    Credential::Basic(c) => Ok(Some(basic(&c))),
                    Credential::RefreshToken(_) => Err(RegistryError::Unauthorized {
                        status: 401,
                        what: "registry (it asks for Basic auth; a refresh token needs a token realm)",
                    }),
                    Credential::Anonymous => Err(RegistryError::Unauthorized {
                        status: 401,
                        what: "registry (Basic auth required, no identity found)",
                    }),
                },
                None => Err(RegistryError::Unauthorized {
                    status: 401,
                    what: "registry (Basic auth required, no credentials configured)",
                }),
            },
            Scheme::Bearer { realm, service } => {
                let token = self
                    .tokens
                    .get(scope, || {
                        self.fetch_token(transport, &realm, service.as_deref(), scope)
                    })
                    .await?;
                Ok(Some(bearer(&token)))
            }
        }
    }

    /// Where the credentials come from, for `regwatch check`; `None` while the registry has not
    /// asked for any (credentials configured but never sent are not "used").
    pub fn source(&self) -> Option<String> {
        let challenged = !matches!(*self.scheme.lock().expect("scheme lock"), Scheme::Unknown);
        self.credentials
            .as_ref()
            .filter(|_| challenged)
            .map(|c| c.describe())
    }

    /// The registry refused the token it was shown for `scope` (a 401 after a fresh token, or a
    /// 403): that token is not presented again, whatever its age, since the realm decides a
    /// scope's access anew at every grant for the cost of one call; the source's credentials,
    /// shared by every scope, pass the refusal gate.
    pub fn refused_in(&self, scope: &str) {
        self.tokens.invalidate(scope);
        self.refused();
    }

    /// The registry refused the credentials: the source mints new ones next time.
    pub fn refused(&self) {
        if let Some(c) = &self.credentials {
            c.refused();
        }
    }

    async fn fetch_token(
        &self,
        transport: &Transport,
        realm: &Url,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(SecretString, Duration), RegistryError> {
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            // The ping asks with no scope: a token that only proves the credentials.
            if !scope.is_empty() {
                q.append_pair("scope", scope);
            }
        }
        // The realm is the one a 401 from the registry's own origin named (on_challenge refuses
        // any other, and plain http unless insecure), so credentials may go there.
        let credential = match &self.credentials {
            Some(c) => Some(c.credential().await?),
            None => None,
        };
        let response = transport
            .send(|| match &credential {
                None | Some(Credential::Anonymous) => transport.client().get(url.clone()),
                Some(Credential::Basic(c)) => transport
                    .client()
                    .get(url.clone())
                    .header(header::AUTHORIZATION, sensitive(&basic(c))),
                // The Docker token spec's OAuth2 flow: the same realm, a POSTed form.
                Some(Credential::RefreshToken(token)) => {
                    let mut form = vec![
                        ("grant_type", "refresh_token"),
                        ("client_id", "regwatch"),
                        ("refresh_token", token.expose_secret()),
                    ];
                    if let Some(s) = service {
                        form.push(("service", s));
                    }
                    if !scope.is_empty() {
                        form.push(("scope", scope));
                    }
                    // Not redirected: a 307/308 would re-send the token to its `Location`.
                    transport
                        .no_redirect_client()
                        .post(realm.clone())
                        .form(&form)
                }
            })
            .await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            self.refused();
            return Err(RegistryError::Unauthorized {
                status: status.as_u16(),
                what: "token endpoint",
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                status: status.as_u16(),
                what: "token endpoint".into(),
            });
        }
        expect_json(&response)?;
        let body = read_body(response, TOKEN_BODY_CAP).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Protocol(format!("token response is not valid JSON: {e}"))
        })?;
        let value = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                RegistryError::Protocol("token response has neither token nor access_token".into())
            })?;
        if value.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(RegistryError::Protocol(
                "token contains characters not allowed in a header".into(),
            ));
        }
        // ACR's realm answers `access_token` alone; its JWT's `exp` says how long it lives.
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .or_else(|| jwt_lifetime(&value))
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok((value.into(), lifetime))
    }
}

/// The time left until a JWT's `exp`, read without verifying it (the issuer checks its own tokens;
/// this only decides when to renew). `None` when `token` is not a JWT with `exp`.
pub fn jwt_lifetime(token: &str) -> Option<Duration> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?)
            .ok()?;
    // `exp` is the peer's number: past SystemTime's range it is simply far away, and no lifetime
    // beyond MAX_LIFETIME is believed (callers add it to an Instant).
    let exp = claims.get("exp")?.as_u64()?;
    let Some(exp) = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(exp)) else {
        return Some(MAX_LIFETIME);
    };
    Some(
        exp.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(MAX_LIFETIME),
    )
}

/// A header value that `Debug` output (and HTTP/2 header compression) treats as secret.
pub fn sensitive(value: &SecretString) -> header::HeaderValue {
    let mut v = header::HeaderValue::from_str(value.expose_secret())
        .unwrap_or_else(|_| header::HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// `Basic base64(user:password)`.
pub(crate) fn basic(c: &Credentials) -> SecretString {
    let raw = format!("{}:{}", c.username, c.password.expose_secret());
    format!("Basic {}", BASE64.encode(raw)).into()
}

fn bearer(token: &SecretString) -> SecretString {
    format!("Bearer {}", token.expose_secret()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review: a JWT's `exp` is the peer's number (an ACR login server's refresh token, a
    /// credential helper's answer, a realm's access token). One past what `SystemTime` holds
    /// panicked on `UNIX_EPOCH + Duration`; a far one overflowed the callers' `Instant + lifetime`.
    #[test]
    fn jwt_lifetime_survives_absurd_expiry() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = |exp: u64| {
            format!(
                "e30.{}.sig",
                URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"))
            )
        };
        for exp in [u64::MAX, 10_000_000_000_000_000_000, 1 << 62] {
            let lifetime = jwt_lifetime(&jwt(exp)).expect("a lifetime");
            assert!(lifetime <= MAX_LIFETIME, "{lifetime:?}");
            let _ = std::time::Instant::now() + lifetime;
        }
        assert_eq!(jwt_lifetime(&jwt(1)), Some(Duration::ZERO), "expired");
    }

    #[test]
    fn parses_docker_hub_bearer() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            }
        );
    }

    #[test]
    fn parses_quoted_commas_escapes_and_case() {
        let c = parse_challenge(
            r#"bearer Realm="https://r/t", scope="repository:a:pull,push", service="s\"x""#,
        )
        .unwrap();
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = c
        else {
            panic!()
        };
        assert_eq!(realm, "https://r/t");
        assert_eq!(scope.as_deref(), Some("repository:a:pull,push"));
        assert_eq!(service.as_deref(), Some("s\"x"));
    }

    #[test]
    fn basic_and_garbage() {
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Basic"), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None, "no realm");
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
        assert_eq!(parse_challenge("Bearer =x"), None);
        assert_eq!(parse_challenge(""), None);
    }
}
