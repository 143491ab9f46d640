//! Validation: the checks that involve more than one key or value (credential pairs, keys of
//! another kind, limits, duplicate names), and the typed [`Config`](super::Config) they produce.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::raw::{RawConfig, RawRegistry, RawVersions, Scheme};
use super::secrets::one_secret;
use super::{
    AcrConfig, AssumeRole, Config, ConfigError, Credentials, DaemonConfig, EcrConfig, GcrConfig,
    KafkaConfig, Kind, Provider, RegistryConfig, RepoPattern, TagFilter, line_of, qualified_name,
};
use crate::registry::{acr, docker_config, dockerhub, ecr, gcr, google};
use crate::watch::versions::VersionPolicy;

/// Builds the typed configuration from the raw schema, or the first problem found.
pub(super) fn validate(raw: RawConfig, text: &str) -> Result<Config, ConfigError> {
    let daemon = DaemonConfig {
        state_dir: raw.daemon.state_dir,
        interval: raw.daemon.interval.0,
        jitter: raw.daemon.jitter.0,
        first_run: raw.daemon.first_run,
        emit_removed: raw.daemon.emit_removed,
        admin_listen: raw.daemon.admin_listen,
        shutdown_timeout: raw.daemon.shutdown_timeout.0,
    };
    let kafka = raw.kafka.map(|k| KafkaConfig {
        brokers: k.brokers.0,
        topic: k.topic,
        create_topic: k.create_topic,
        partitions: k.partitions,
        replication_factor: k.replication_factor,
        properties: k.properties.into_iter().map(|(k, v)| (k, v.0)).collect(),
    });
    if let Some(k) = &kafka {
        let err = |key: &str, message: &str| ConfigError {
            path: format!("kafka.{key}"),
            line: find_line(text, key),
            message: message.into(),
        };
        if k.brokers.trim().is_empty() {
            return Err(err("brokers", "must name at least one broker"));
        }
        if k.topic.is_empty() {
            return Err(err("topic", "must not be empty"));
        }
        if k.partitions < 1 {
            return Err(err("partitions", "must be at least 1"));
        }
        if k.replication_factor == 0 || k.replication_factor < -1 {
            return Err(err(
                "replication_factor",
                "must be -1 (broker default) or at least 1",
            ));
        }
    }

    let cluster = match raw.cluster {
        None => None,
        Some(spanned) => {
            let line = Some(line_of(text, spanned.span().start));
            let c = spanned.into_inner();
            let err = |key: &str, message: String| ConfigError {
                path: key.into(),
                line,
                message,
            };
            let Some(k) = &kafka else {
                return Err(err(
                    "cluster",
                    "cluster mode keeps its state in Kafka: add a [kafka] section".into(),
                ));
            };
            if c.group.trim().is_empty() {
                return Err(err("cluster.group", "must not be empty".into()));
            }
            if c.partitions < 1 {
                return Err(err("cluster.partitions", "must be at least 1".into()));
            }
            let state_topic = c
                .state_topic
                .unwrap_or_else(|| format!("{}.state", k.topic));
            if state_topic == k.topic {
                return Err(err(
                    "cluster.state_topic",
                    "must differ from kafka.topic (state records are not events)".into(),
                ));
            }
            if c.session_timeout.0 < Duration::from_secs(1) {
                return Err(err("cluster.session_timeout", "must be at least 1s".into()));
            }
            Some(super::ClusterConfig {
                group: c.group,
                state_topic,
                session_timeout: c.session_timeout.0,
                exactly_once: c.exactly_once,
                partitions: c.partitions,
                verify_state_topic: c.verify_state_topic,
            })
        }
    };

    let mut registries: Vec<RegistryConfig> = Vec::with_capacity(raw.registry.len());
    for (i, spanned) in raw.registry.into_iter().enumerate() {
        let table_line = line_of(text, spanned.span().start);
        let r = validate_registry(spanned.into_inner(), &daemon, text, i, table_line)?;
        if registries.iter().any(|o| o.name == r.name) {
            return Err(ConfigError {
                path: format!("registry[{i}].name"),
                line: Some(table_line),
                message: format!("duplicate registry name {:?}", r.name),
            });
        }
        registries.push(r);
    }
    if registries.is_empty() {
        return Err(ConfigError {
            path: "registry".into(),
            line: None,
            message: "no [[registry]] configured; add at least one".into(),
        });
    }
    Ok(Config {
        daemon,
        kafka,
        cluster,
        registries,
    })
}

/// Best-effort line of a `key =` for errors about values that carry no span of their own.
fn find_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn validate_registry(
    r: RawRegistry,
    daemon: &DaemonConfig,
    text: &str,
    index: usize,
    table_line: usize,
) -> Result<RegistryConfig, ConfigError> {
    let err = |key: &str, line: usize, message: String| ConfigError {
        path: format!("registry[{index}].{key}"),
        line: Some(line),
        message,
    };
    let kind = *r.kind.get_ref();
    match kind {
        Kind::Oci | Kind::Harbor | Kind::Acr | Kind::Ecr | Kind::Gcr | Kind::Dockerhub => {}
    }
    if r.name.is_empty()
        || !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(err(
            "name",
            table_line,
            format!(
                "invalid name {:?}: use letters, digits, '-', '_' or '.'",
                r.name
            ),
        ));
    }

    let url_line = line_of(text, r.url.span().start);
    let url_text = r.url.get_ref().trim_end_matches('/');
    let url = Url::parse(url_text)
        .map_err(|e| err("url", url_line, format!("invalid URL {url_text:?}: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if r.insecure => {}
        "http" => {
            return Err(err(
                "url",
                url_line,
                "plain http:// sends credentials and data unencrypted; use https:// or set insecure = true".into(),
            ));
        }
        other => {
            return Err(err(
                "url",
                url_line,
                format!("unsupported scheme {other:?}; use https://"),
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(err(
            "url",
            url_line,
            "URL must not carry a query, fragment or user info; use username/password".into(),
        ));
    }
    cloud_host(kind, &url).map_err(|e| err("url", url_line, e))?;
    let mut host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(err("url", url_line, "URL has no host".into())),
    };
    let mut url = url;
    let mut is_hub = false;
    if kind == Kind::Dockerhub
        && let Some(api) = dockerhub::api_endpoint(&host)
    {
        url = api;
        host = dockerhub::EVENT_HOST.into();
        is_hub = true;
    }
    let hub_api = hub_api(&r, kind, is_hub, text, &err)?;

    let provider = provider(&r, kind, &url, &err, table_line)?;
    // The Hub counts a manifest GET as a pull whichever kind names it (`oci` reads it as well).
    let pulls_counted = kind == Kind::Dockerhub || dockerhub::api_endpoint(&host).is_some();
    let (platforms, require_platforms) = platforms(&r, kind, pulls_counted, text, &err)?;
    let password = one_secret(r.password, r.password_file, "password", &err, table_line)?;
    let credentials = match (r.username, password) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.0,
            password: p,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(
                "password",
                table_line,
                "username is set but no password or password_file".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "username",
                table_line,
                "password is set but no username".into(),
            ));
        }
    };
    let webhook_token = one_secret(
        r.webhook_token,
        r.webhook_token_file,
        "webhook_token",
        &err,
        table_line,
    )?;

    let docker_config = match r.docker_config {
        None => None,
        Some(spanned) => {
            let line = line_of(text, spanned.span().start);
            let path = PathBuf::from(spanned.into_inner().0);
            if kind == Kind::Ecr {
                return Err(err(
                    "docker_config",
                    line,
                    "kind ecr is watched through the AWS API (DescribeImages), not a registry login; use the AWS credential chain or access_key_id".into(),
                ));
            }
            docker_config::validate(&path, &docker_config::server_key(&host))
                .map_err(|e| err("docker_config", line, e))?;
            Some(path)
        }
    };

    if matches!(provider, Provider::Ecr(_) | Provider::Gcr(_)) && credentials.is_some() {
        return Err(err(
            "username",
            table_line,
            format!(
                "kind {} authenticates with its own keys, not username/password",
                kind.as_str()
            ),
        ));
    }

    let concurrency = r.concurrency.unwrap_or(8);
    if concurrency == 0 {
        return Err(err("concurrency", table_line, "must be at least 1".into()));
    }
    let page_size = r.page_size.unwrap_or(1000);
    if page_size == 0 {
        return Err(err("page_size", table_line, "must be at least 1".into()));
    }
    let repositories = if r.repositories.is_empty() {
        vec![RepoPattern::parse("**").expect("static glob")]
    } else {
        r.repositories.into_iter().map(|p| p.0).collect()
    };
    if kind == Kind::Dockerhub
        && repositories
            .iter()
            .any(|p| matches!(p, RepoPattern::Glob(_)))
    {
        return Err(err(
            "repositories",
            table_line,
            "Docker Hub has no catalog API, so globs cannot be resolved; list repositories by name (e.g. \"nginx\", \"bitnami/redis\")".into(),
        ));
    }
    let repositories = repositories
        .iter()
        .map(|p| {
            let full = qualified_name(kind, &provider, p.as_str());
            RepoPattern::parse(&full).expect("a valid pattern stays valid with a plain prefix")
        })
        .collect();
    let versions = version_policy(r.versions, text, &err)?;

    Ok(RegistryConfig {
        name: r.name,
        kind,
        provider,
        url,
        host,
        credentials,
        repositories,
        tags: TagFilter {
            include: r.include_tags.into_iter().map(|t| t.0).collect(),
            exclude: r.exclude_tags.into_iter().map(|t| t.0).collect(),
            mutable: r.mutable_tags,
            signature_tags: r.signature_tags,
            versions,
        },
        interval: r.interval.map_or(daemon.interval, |d| d.0),
        rate_limit: r
            .rate_limit
            .unwrap_or(NonZeroU32::new(20).expect("non-zero")),
        concurrency,
        page_size,
        request_timeout: r.request_timeout.map_or(Duration::from_secs(30), |d| d.0),
        insecure: r.insecure,
        webhook_token,
        docker_config,
        hub_api,
        mature_after: r.mature_after.map(|d| d.0),
        platforms,
        require_platforms,
    })
}

/// A cloud kind's identity goes only to its own cloud: `gcr` to Google's registry hosts, `acr` to
/// Azure's login servers (an Entra token would otherwise be POSTed to whatever `url` says).
/// Loopback stays allowed, for tests and local proxies.
fn cloud_host(kind: Kind, url: &Url) -> Result<(), String> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    let host = url.host_str().unwrap_or_default();
    match kind {
        _ if loopback => Ok(()),
        Kind::Gcr if !gcr::is_google_registry_host(host) => Err(format!(
            "kind gcr sends Google credentials to its url, so it must be a Google registry: https://gcr.io, a regional https://*.gcr.io or https://LOCATION-docker.pkg.dev, not {host:?}; use kind = \"oci\" for other registries"
        )),
        Kind::Acr if !acr::is_azure_registry_host(host) => Err(format!(
            "kind acr sends Azure credentials to its url, so it must be an Azure login server: https://NAME.azurecr.io (or .azurecr.cn, .azurecr.us), not {host:?}; use kind = \"oci\" for other registries"
        )),
        _ => Ok(()),
    }
}

/// `platforms`, `require_platforms` and `allow_pulls`: whether to look platforms up, and which are
/// required. Reading them costs a manifest GET per new digest, which Docker Hub (`hub`) counts as a
/// pull.
fn platforms(
    r: &RawRegistry,
    kind: Kind,
    hub: bool,
    text: &str,
    err: &impl Fn(&str, usize, String) -> ConfigError,
) -> Result<(bool, Vec<String>), ConfigError> {
    let line = |span: std::ops::Range<usize>| line_of(text, span.start);
    let asked = r.platforms.as_ref().filter(|p| *p.get_ref());
    let required = r
        .require_platforms
        .as_ref()
        .filter(|p| !p.get_ref().is_empty());
    // The key that turned the lookup on, for errors.
    let on = match (asked, required) {
        (Some(p), _) => Some(("platforms", line(p.span()))),
        (None, Some(p)) => Some(("require_platforms", line(p.span()))),
        (None, None) => None,
    };
    let allowed = r.allow_pulls.as_ref().is_some_and(|a| *a.get_ref());
    if let Some(a) = &r.allow_pulls
        && !hub
    {
        return Err(err(
            "allow_pulls",
            line(a.span()),
            "allow_pulls applies only to Docker Hub (kind = \"dockerhub\", or a Docker Hub url), where a manifest GET counts as a pull".into(),
        ));
    }
    match (on, kind) {
        (Some((key, line)), _) if hub && !allowed => Err(err(
            key,
            line,
            format!(
                "{key} GETs the manifest of every new digest, and on Docker Hub a manifest GET counts as a pull against the account's pull rate limit; set allow_pulls = true to accept that (one pull per new digest; a single-platform image's config blob GET is no pull)"
            ),
        )),
        (Some((key, line)), Kind::Ecr) => Err(err(
            key,
            line,
            format!(
                "{key} is not available for kind = \"ecr\": regwatch reads ECR through DescribeImages, which does not return platforms (it would take BatchGetImage per digest, plus a layer download through S3 for single-platform images)"
            ),
        )),
        _ => Ok((
            on.is_some(),
            required
                .map(|p| p.get_ref().iter().map(|n| n.0.clone()).collect())
                .unwrap_or_default(),
        )),
    }
}

/// `[registry.versions]`: `None` for `scheme = "none"`, whose other keys would do nothing.
fn version_policy(
    raw: Option<RawVersions>,
    text: &str,
    err: &impl Fn(&str, usize, String) -> ConfigError,
) -> Result<Option<VersionPolicy>, ConfigError> {
    let Some(v) = raw else {
        return Ok(None);
    };
    if v.scheme == Scheme::None {
        let set = [
            ("range", v.range.as_ref().map(|r| r.span())),
            ("prerelease", v.prerelease.as_ref().map(|p| p.span())),
            ("only_newer", v.only_newer.as_ref().map(|o| o.span())),
        ];
        if let Some((key, span)) = set.into_iter().find_map(|(k, s)| Some((k, s?))) {
            return Err(err(
                &format!("versions.{key}"),
                line_of(text, span.start),
                format!("{key} needs scheme = \"semver\""),
            ));
        }
        return Ok(None);
    }
    Ok(Some(VersionPolicy::new(
        v.range.map(|r| r.into_inner().0),
        v.prerelease.is_some_and(|p| p.into_inner()),
        v.only_newer.is_some_and(|o| o.into_inner()),
    )))
}

/// `hub_api_url` (dockerhub only): Docker Hub's API base, whose tag listing gives digests and push
/// times without a HEAD per tag. Docker Hub itself gets https://hub.docker.com by default; a
/// `dockerhub` entry at another URL (a mirror, a test registry) lists through the Distribution
/// API unless the key names the Hub API that knows its repositories.
fn hub_api(
    r: &RawRegistry,
    kind: Kind,
    is_hub: bool,
    text: &str,
    err: &impl Fn(&str, usize, String) -> ConfigError,
) -> Result<Option<Url>, ConfigError> {
    let Some(spanned) = &r.hub_api_url else {
        return Ok(is_hub.then(|| Url::parse(dockerhub::HUB_API).expect("static URL")));
    };
    let line = line_of(text, spanned.span().start);
    if kind != Kind::Dockerhub {
        return Err(err(
            "hub_api_url",
            line,
            "hub_api_url applies only to kind = \"dockerhub\"".into(),
        ));
    }
    let text = spanned.get_ref().trim_end_matches('/');
    // Empty turns the Hub API off: for networks that reach the registry but not hub.docker.com.
    if text.trim().is_empty() {
        return Ok(None);
    }
    let u = Url::parse(text)
        .map_err(|e| err("hub_api_url", line, format!("invalid URL {text:?}: {e}")))?;
    match u.scheme() {
        "https" => {}
        "http" if r.insecure => {}
        _ => {
            return Err(err(
                "hub_api_url",
                line,
                "hub_api_url must be https:// (or http:// with insecure = true)".into(),
            ));
        }
    }
    if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
        return Err(err(
            "hub_api_url",
            line,
            "hub_api_url is a base URL such as https://hub.docker.com, without query or user info"
                .into(),
        ));
    }
    Ok(Some(u))
}

/// Builds the kind-specific settings, rejecting keys that belong to another kind.
fn provider(
    r: &RawRegistry,
    kind: Kind,
    url: &Url,
    err: &impl Fn(&str, usize, String) -> ConfigError,
    line: usize,
) -> Result<Provider, ConfigError> {
    let only_for = |key: &str, present: bool, for_kind: Kind| -> Result<(), ConfigError> {
        if present && kind != for_kind {
            return Err(err(
                key,
                line,
                format!("{key} applies only to kind = \"{}\"", for_kind.as_str()),
            ));
        }
        Ok(())
    };
    only_for("region", r.region.is_some(), Kind::Ecr)?;
    only_for("access_key_id", r.access_key_id.is_some(), Kind::Ecr)?;
    only_for(
        "secret_access_key",
        r.secret_access_key.is_some(),
        Kind::Ecr,
    )?;
    only_for(
        "secret_access_key_file",
        r.secret_access_key_file.is_some(),
        Kind::Ecr,
    )?;
    only_for("registry_id", r.registry_id.is_some(), Kind::Ecr)?;
    only_for("endpoint", r.endpoint.is_some(), Kind::Ecr)?;
    only_for("role_arn", r.role_arn.is_some(), Kind::Ecr)?;
    only_for("external_id", r.external_id.is_some(), Kind::Ecr)?;
    only_for("session_name", r.session_name.is_some(), Kind::Ecr)?;
    only_for("project_id", r.project_id.is_some(), Kind::Gcr)?;
    only_for("json_key", r.json_key.is_some(), Kind::Gcr)?;
    only_for("json_key_file", r.json_key_file.is_some(), Kind::Gcr)?;
    only_for(
        "impersonate_service_account",
        r.impersonate_service_account.is_some(),
        Kind::Gcr,
    )?;
    only_for("iam_endpoint", r.iam_endpoint.is_some(), Kind::Gcr)?;
    only_for("tenant_id", r.tenant_id.is_some(), Kind::Acr)?;
    only_for("client_id", r.client_id.is_some(), Kind::Acr)?;
    only_for("client_secret", r.client_secret.is_some(), Kind::Acr)?;
    only_for(
        "client_secret_file",
        r.client_secret_file.is_some(),
        Kind::Acr,
    )?;
    match kind {
        Kind::Acr => acr_provider(r, err, line).map(Provider::Acr),
        Kind::Ecr => ecr_provider(r, url, err, line).map(Provider::Ecr),
        Kind::Gcr => gcr_provider(r, err, line).map(Provider::Gcr),
        _ => Ok(Provider::Distribution),
    }
}

/// ACR's Entra keys: a client secret needs its tenant and app, and replaces username/password.
fn acr_provider(
    r: &RawRegistry,
    err: &impl Fn(&str, usize, String) -> ConfigError,
    line: usize,
) -> Result<AcrConfig, ConfigError> {
    let client_secret = match (&r.client_secret, &r.client_secret_file) {
        (Some(s), None) => Some(s.0.clone()),
        (None, Some(f)) => Some(f.0.clone()),
        (Some(_), Some(_)) => {
            return Err(err(
                "client_secret",
                line,
                "set either client_secret or client_secret_file, not both".into(),
            ));
        }
        (None, None) => None,
    };
    let config = AcrConfig {
        tenant_id: r.tenant_id.as_ref().map(|t| t.0.clone()),
        client_id: r.client_id.as_ref().map(|c| c.0.clone()),
        client_secret,
    };
    if config.client_secret.is_some() {
        if r.username.is_some() {
            return Err(err(
                "client_secret",
                line,
                "set either username/password or client_secret, not both".into(),
            ));
        }
        for (key, value) in [
            ("tenant_id", &config.tenant_id),
            ("client_id", &config.client_id),
        ] {
            if value.as_deref().is_none_or(str::is_empty) {
                return Err(err(
                    key,
                    line,
                    format!("client_secret needs {key} (the app registration's {key})"),
                ));
            }
        }
    }
    Ok(config)
}

fn gcr_provider(
    r: &RawRegistry,
    err: &impl Fn(&str, usize, String) -> ConfigError,
    line: usize,
) -> Result<GcrConfig, ConfigError> {
    let project_id = r
        .project_id
        .clone()
        .ok_or_else(|| err("project_id", line, "kind gcr needs project_id".into()))?;
    let json_key = match (&r.json_key, &r.json_key_file) {
        (Some(k), None) => Some(k.0.clone()),
        (None, Some(f)) => Some(f.0.clone()),
        (Some(_), Some(_)) => {
            return Err(err(
                "json_key",
                line,
                "set either json_key or json_key_file, not both".into(),
            ));
        }
        // Application Default Credentials, resolved when the registry is first asked.
        (None, None) => None,
    };
    if let Some(key) = &json_key {
        gcr::check_key(key).map_err(|e| err("json_key", line, e))?;
    }
    let impersonate_service_account = r
        .impersonate_service_account
        .as_deref()
        .map(|email| {
            gcr::check_service_account_email(email)
                .map(|()| email.to_owned())
                .map_err(|e| err("impersonate_service_account", line, e))
        })
        .transpose()?;
    let iam_endpoint = match &r.iam_endpoint {
        None => Url::parse(google::DEFAULT_IAM_ENDPOINT).expect("static URL"),
        Some(_) if impersonate_service_account.is_none() => {
            return Err(err(
                "iam_endpoint",
                line,
                "iam_endpoint is used only with impersonate_service_account".into(),
            ));
        }
        Some(e) => {
            let u = Url::parse(e)
                .map_err(|x| err("iam_endpoint", line, format!("invalid URL {e:?}: {x}")))?;
            match u.scheme() {
                "https" => {}
                "http" if r.insecure => {}
                _ => {
                    return Err(err(
                        "iam_endpoint",
                        line,
                        "iam_endpoint must be https:// (or http:// with insecure = true)".into(),
                    ));
                }
            }
            if u.path() != "/" || u.query().is_some() || !u.username().is_empty() {
                return Err(err(
                    "iam_endpoint",
                    line,
                    "iam_endpoint is a base URL such as https://iamcredentials-myendpoint.p.googleapis.com, without a path".into(),
                ));
            }
            u
        }
    };
    Ok(GcrConfig {
        project_id,
        json_key,
        impersonate_service_account,
        iam_endpoint,
    })
}

fn ecr_provider(
    r: &RawRegistry,
    url: &Url,
    err: &impl Fn(&str, usize, String) -> ConfigError,
    line: usize,
) -> Result<EcrConfig, ConfigError> {
    let from_host = ecr::account_and_region(url.host_str().unwrap_or_default());
    let region = r
        .region
        .clone()
        .or_else(|| from_host.map(|(_, region)| region.to_owned()))
        .ok_or_else(|| {
            err(
                "region",
                line,
                "kind ecr needs region (or an account URL that names it)".into(),
            )
        })?;
    let registry_id = r
        .registry_id
        .clone()
        .or_else(|| from_host.map(|(account, _)| account.to_owned()))
        .filter(|id| ecr::valid_registry_id(id))
        .ok_or_else(|| {
            err(
                "registry_id",
                line,
                "kind ecr needs a 12-digit registry_id, or url = \"https://<account>.dkr.ecr.<region>.amazonaws.com\"".into(),
            )
        })?;
    let secret = match (&r.secret_access_key, &r.secret_access_key_file) {
        (Some(s), None) => Some(s.0.clone()),
        (None, Some(f)) => Some(f.0.clone()),
        (Some(_), Some(_)) => {
            return Err(err(
                "secret_access_key",
                line,
                "set either secret_access_key or secret_access_key_file, not both".into(),
            ));
        }
        (None, None) => None,
    };
    let keys = match (&r.access_key_id, secret) {
        (Some(id), Some(secret)) => Some((id.0.clone(), secret)),
        (None, None) => None,
        _ => {
            return Err(err(
                "access_key_id",
                line,
                "set both access_key_id and secret_access_key, or neither (to use the default AWS credential chain)".into(),
            ));
        }
    };
    let endpoint = r
        .endpoint
        .as_deref()
        .map(|e| {
            let u = Url::parse(e)
                .map_err(|x| err("endpoint", line, format!("invalid URL {e:?}: {x}")))?;
            match u.scheme() {
                "https" => Ok(u),
                "http" if r.insecure => Ok(u),
                _ => Err(err(
                    "endpoint",
                    line,
                    "endpoint must be https:// (or set insecure = true)".into(),
                )),
            }
        })
        .transpose()?;
    let assume_role = match &r.role_arn {
        Some(arn) => {
            if !ecr::valid_role_arn(arn) {
                return Err(err(
                    "role_arn",
                    line,
                    format!(
                        "invalid role ARN {arn:?}; use arn:aws:iam::<12-digit account>:role/<name> (or the aws-cn / aws-us-gov partition)"
                    ),
                ));
            }
            if let Some(id) = r
                .external_id
                .as_deref()
                .filter(|id| !ecr::valid_external_id(id))
            {
                return Err(err(
                    "external_id",
                    line,
                    format!(
                        "invalid external_id {id:?}: AWS allows 2 to 1224 of letters, digits and +=,.@:/-"
                    ),
                ));
            }
            let session_name = r.session_name.clone().unwrap_or_else(|| "regwatch".into());
            if !ecr::valid_session_name(&session_name) {
                return Err(err(
                    "session_name",
                    line,
                    format!(
                        "invalid session_name {session_name:?}: AWS allows 2 to 64 of letters, digits and +=,.@-"
                    ),
                ));
            }
            Some(Box::new(AssumeRole {
                role_arn: arn.clone(),
                external_id: r.external_id.clone(),
                session_name,
            }))
        }
        None if r.external_id.is_some() || r.session_name.is_some() => {
            let key = if r.external_id.is_some() {
                "external_id"
            } else {
                "session_name"
            };
            return Err(err(
                key,
                line,
                format!("{key} needs role_arn (the role to assume)"),
            ));
        }
        None => None,
    };
    Ok(EcrConfig {
        region,
        registry_id,
        keys,
        endpoint,
        assume_role,
    })
}
