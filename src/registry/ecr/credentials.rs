//! Where an ECR entry's AWS credentials come from: static keys from the config, or the SDK's own
//! default chain (environment, profile, web identity as EKS IRSA injects it, the container
//! credentials endpoint of ECS and EKS Pod Identity, instance metadata), optionally with a role
//! assumed on top (`role_arn`). Also the words `check` prints for the source, or for why it failed,
//! never holding a secret.

use std::error::Error;
use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;

use crate::config::EcrConfig;
use crate::registry::RegistryError;

/// The credentials an ECR client signs with, and the source they were last resolved from.
pub(super) struct Credentials {
    /// What the ECR client is given.
    pub(super) provider: SharedCredentialsProvider,
    source: Arc<Mutex<Option<&'static str>>>,
    role_arn: Option<String>,
}

impl Credentials {
    /// Static keys or the SDK's default chain (whichever `sdk` carries), with `role_arn` assumed
    /// on top when configured. The STS client of AssumeRole is built from `sdk`, so it honours
    /// `AWS_ENDPOINT_URL_STS` like the SDK's own.
    pub(super) async fn new(config: &EcrConfig, sdk: &SdkConfig) -> Credentials {
        let source = Arc::new(Mutex::new(None));
        let base = Recorded {
            inner: sdk
                .credentials_provider()
                .expect("aws_config::load always sets a credentials provider"),
            static_keys: config.keys.is_some(),
            source: source.clone(),
        };
        let provider = match &config.assume_role {
            None => SharedCredentialsProvider::new(base),
            Some(role) => {
                let mut builder = AssumeRoleProvider::builder(&role.role_arn)
                    .session_name(&role.session_name)
                    .configure(sdk);
                if let Some(id) = &role.external_id {
                    builder = builder.external_id(id);
                }
                SharedCredentialsProvider::new(builder.build_from_provider(base).await)
            }
        };
        Credentials {
            provider,
            source,
            role_arn: config.assume_role.as_ref().map(|r| r.role_arn.clone()),
        }
    }

    /// The source of the credentials resolved last, in words; `None` before any resolved.
    pub(super) fn source(&self) -> Option<String> {
        let base = (*self.source.lock().expect("not poisoned"))?;
        Some(match &self.role_arn {
            Some(arn) => format!("assumed role {arn} via {base}"),
            None => base.to_owned(),
        })
    }
}

/// Forwards to the base provider and notes which source answered. It sits under the SDK's
/// identity cache (and under AssumeRole), so it runs once per credential lifetime.
#[derive(Debug)]
struct Recorded {
    inner: SharedCredentialsProvider,
    static_keys: bool,
    source: Arc<Mutex<Option<&'static str>>>,
}

impl ProvideCredentials for Recorded {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let credentials = self.inner.provide_credentials().await?;
            *self.source.lock().expect("not poisoned") = Some(if self.static_keys {
                "static keys"
            } else {
                source_of(&credentials)
            });
            Ok(credentials)
        })
    }
}

/// Names the default chain's provider from the features the SDK tags its credentials with.
fn source_of(credentials: &aws_credential_types::Credentials) -> &'static str {
    use AwsCredentialFeature as F;
    let features = credentials
        .get_property::<Vec<AwsCredentialFeature>>()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |f: F| features.contains(&f);
    // A profile may itself use web identity, SSO or a process; it is still "the profile".
    if has(F::CredentialsProfile) {
        "profile"
    } else if has(F::CredentialsProfileStsWebIdToken)
        || has(F::CredentialsEnvVarsStsWebIdToken)
        || has(F::CredentialsStsAssumeRoleWebId)
    {
        "web identity (IRSA)"
    } else if has(F::CredentialsHttp) {
        "container credentials"
    } else if has(F::CredentialsImds) {
        "instance metadata (IMDS)"
    } else if has(F::CredentialsEnvVars) {
        "environment"
    } else {
        "default chain"
    }
}

/// When an ECR call failed because no credentials could be had: STS refusing a role (a verdict
/// on the credentials, so `Unauthorized`), or the source failing (`NoCredentials`, with why).
pub(super) fn credentials_failure(error: &(dyn Error + 'static)) -> Option<RegistryError> {
    let mut cause = Some(error);
    let mut found = None;
    while let Some(e) = cause {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            // The innermost says why: AssumeRole wraps its base's failure.
            found = Some(c);
        }
        if let Some(refused) = sts_refusal(e) {
            return Some(refused);
        }
        cause = e.source();
    }
    found.map(|c| RegistryError::NoCredentials(reason(c)))
}

/// STS refusing AssumeRole or AssumeRoleWithWebIdentity for the credentials, or not answering.
fn sts_refusal(e: &(dyn Error + 'static)) -> Option<RegistryError> {
    fn refused<E: ProvideErrorMetadata + Error + 'static>(
        e: &SdkError<E>,
    ) -> Option<RegistryError> {
        let s = match e {
            SdkError::ServiceError(s) => s,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                let mut root: &(dyn Error + 'static) = e;
                while let Some(next) = root.source() {
                    root = next;
                }
                return Some(RegistryError::NoCredentials(format!(
                    "STS unreachable: {root}"
                )));
            }
            _ => return None,
        };
        let status = s.raw().status().as_u16();
        let auth = matches!(
            s.err().code(),
            Some(
                "AccessDenied"
                    | "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "ExpiredTokenException"
                    | "InvalidIdentityToken"
                    | "IDPRejectedClaim"
            )
        );
        (auth || status == 401 || status == 403).then_some(RegistryError::Unauthorized {
            status: if status == 400 { 403 } else { status },
            what: "STS",
        })
    }
    if let Some(e) = e.downcast_ref::<SdkError<AssumeRoleError>>() {
        return refused(e);
    }
    e.downcast_ref::<SdkError<AssumeRoleWithWebIdentityError>>()
        .and_then(refused)
}

/// Why the source produced nothing, in words that name the file or endpoint but no secret.
fn reason(error: &CredentialsError) -> String {
    if let CredentialsError::CredentialsNotLoaded(_) = error {
        return "none found in the AWS default chain (environment, profile, web identity, container credentials, instance metadata)".into();
    }
    let mut innermost: &(dyn Error + 'static) = error;
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = cause {
        // The only header value the chain builds from configuration; the error above this one
        // quotes the token, so it is never displayed.
        if e.is::<reqwest::header::InvalidHeaderValue>() {
            return "container authorization token is not a valid header value (a trailing newline?)"
                .into();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::NotFound
        {
            // The SDK reads these files; its io error does not say which one was missing.
            for (var, what) in [
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "web identity token file"),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    "container authorization token file",
                ),
            ] {
                if let Some(path) =
                    std::env::var_os(var).filter(|p| !std::path::Path::new(p).exists())
                {
                    return format!("{what} not found ({})", path.to_string_lossy());
                }
            }
        }
        innermost = e;
        cause = e.source();
    }
    if let Some(io) = innermost.downcast_ref::<std::io::Error>()
        && matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
        )
    {
        // STS failures were caught before; what else the chain dials is one of these two.
        let container = [
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        let endpoint = if container {
            "container credentials endpoint"
        } else {
            "instance metadata (IMDS)"
        };
        return format!("{endpoint} unreachable: {io}");
    }
    // The SDK's own words for the root cause: they name the provider or endpoint and what went
    // wrong, never the keys.
    match error {
        CredentialsError::ProviderTimedOut(_) => error.to_string(),
        _ => innermost.to_string(),
    }
}
