//! The TOML configuration: the typed [`Config`], and loading it. The raw schema (`raw`), secrets
//! (`secrets`: `${VAR}` and `*_file`) and validation (`validate`) live in their own modules.
//!
//! Everything that can be decided once is decided here: regexes and globs are compiled, URLs parsed,
//! secrets read. Errors carry the key path and the line so that a user can fix the file at once.

mod raw;
mod secrets;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobMatcher;
use regex::Regex;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

pub use secrets::expand_env;

use crate::registry::{dockerhub, gcr};
use crate::watch::versions::VersionPolicy;
use raw::RawConfig;

/// A configuration problem: where it is (key path, line) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path such as `registry[0].include_tags[1]`; empty for file-level errors.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config error")?;
        if !self.path.is_empty() {
            write!(f, " at `{}`", self.path)?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[kafka]`; `None` sends events to stdout.
    pub kafka: Option<KafkaConfig>,
    /// `[cluster]`; `None` runs a single node on the redb store.
    pub cluster: Option<ClusterConfig>,
    /// `[[registry]]`, in file order.
    pub registries: Vec<RegistryConfig>,
}

/// What the first scan of a registry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstRun {
    /// Record what is there and emit nothing.
    Baseline,
    /// Emit every tag seen on first sight.
    Emit,
}

/// `[daemon]`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where the embedded store lives.
    pub state_dir: PathBuf,
    /// Default poll interval.
    pub interval: Duration,
    /// Random spread of each schedule, as a fraction (0.1 = 10 %).
    pub jitter: f64,
    /// Baseline or emit on a registry's first scan.
    pub first_run: FirstRun,
    /// Also emit `tag.removed`.
    pub emit_removed: bool,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// How long SIGTERM may take: in-flight scans, then the last deliveries, are cut off after it.
    pub shutdown_timeout: Duration,
}

/// `[kafka]`.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic events go to.
    pub topic: String,
    /// Create the topic on start when missing.
    pub create_topic: bool,
    /// Partitions of a topic regwatch creates.
    pub partitions: i32,
    /// Replication factor of a topic regwatch creates; -1 is the broker default.
    pub replication_factor: i32,
    /// Passed to librdkafka as is; values may hold secrets, so they are never printed.
    pub properties: Vec<(String, SecretString)>,
}

/// `[cluster]`: replicas sharing the watch set through a Kafka consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The consumer group id.
    pub group: String,
    /// The compacted topic holding state (and webhook hints).
    pub state_topic: String,
    /// How soon a dead replica's share moves (`session.timeout.ms`).
    pub session_timeout: Duration,
    /// Events and state in one Kafka transaction.
    pub exactly_once: bool,
    /// Partitions of a state topic regwatch creates: the most replicas that can share the work.
    pub partitions: i32,
    /// Refuse to scan unless the broker describes the state topic as compacted.
    pub verify_state_topic: bool,
}

/// Which registry API an entry speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Any OCI Distribution registry.
    Oci,
    /// AWS ECR.
    Ecr,
    /// Azure ACR.
    Acr,
    /// Google GCR and Artifact Registry.
    Gcr,
    /// Docker Hub.
    Dockerhub,
    /// Harbor.
    Harbor,
}

impl Kind {
    /// The name used in config and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Oci => "oci",
            Kind::Ecr => "ecr",
            Kind::Acr => "acr",
            Kind::Gcr => "gcr",
            Kind::Dockerhub => "dockerhub",
            Kind::Harbor => "harbor",
        }
    }
}

/// A user name and its password or token.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name, service-principal id or Docker ID.
    pub username: String,
    /// Password or access token.
    pub password: SecretString,
}

/// One entry of `repositories`: an exact name, or a glob resolved through the catalog.
#[derive(Debug, Clone)]
pub enum RepoPattern {
    /// A plain repository name; needs no catalog.
    Exact(String),
    /// A glob such as `team/*`; `*` stays within one path segment, `**` crosses them.
    Glob(GlobMatcher),
}

impl RepoPattern {
    /// Compiles one `repositories` entry.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.contains(['*', '?', '[', '{']) {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("invalid glob {pattern:?}: {e}"))?;
            Ok(RepoPattern::Glob(glob.compile_matcher()))
        } else {
            Ok(RepoPattern::Exact(pattern.to_owned()))
        }
    }

    /// Whether `repo` is selected by this pattern.
    pub fn matches(&self, repo: &str) -> bool {
        match self {
            RepoPattern::Exact(name) => name == repo,
            RepoPattern::Glob(m) => m.is_match(repo),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            RepoPattern::Exact(name) => name,
            RepoPattern::Glob(m) => m.glob().glob(),
        }
    }
}

/// Which tags are reported: include/exclude regexes and the mutable tag names.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    /// A tag must match one of these (empty = all).
    pub include: Vec<Regex>,
    /// A tag matching one of these is ignored.
    pub exclude: Vec<Regex>,
    /// Tags whose digest is re-checked every scan.
    pub mutable: Vec<String>,
    /// Report cosign's `sha256-<hex>.sig|.att|.sbom` tags as tags (`signature_tags`); by default
    /// they are not images and only annotate their subject.
    pub signature_tags: bool,
    /// `[registry.versions]` with `scheme = "semver"`; `None` for `scheme = "none"`.
    pub versions: Option<VersionPolicy>,
}

impl TagFilter {
    /// Whether changes to `tag` are reported.
    pub fn selects(&self, tag: &str) -> bool {
        (self.signature_tags || crate::watch::diff::cosign_subject(tag).is_none())
            && (self.include.is_empty() || self.include.iter().any(|r| r.is_match(tag)))
            && !self.exclude.iter().any(|r| r.is_match(tag))
    }

    /// Whether `tag` is watched for digest moves.
    pub fn is_mutable(&self, tag: &str) -> bool {
        self.mutable.iter().any(|m| m == tag)
    }
}

/// Kind-specific settings.
#[derive(Debug, Clone)]
pub enum Provider {
    /// The Distribution API, as is (oci, harbor, acr, dockerhub).
    Distribution,
    /// The AWS ECR API.
    Ecr(EcrConfig),
    /// The Distribution API, authenticated with a Google service account.
    Gcr(GcrConfig),
    /// The Distribution API, with Entra ID identities exchanged at ACR's `/oauth2/exchange`.
    Acr(AcrConfig),
}

/// `kind = "ecr"` settings.
#[derive(Debug, Clone)]
pub struct EcrConfig {
    /// AWS region.
    pub region: String,
    /// The account whose registry is watched.
    pub registry_id: String,
    /// Static keys; `None` uses the default AWS credential chain.
    pub keys: Option<(String, SecretString)>,
    /// API endpoint override (VPC endpoints, tests).
    pub endpoint: Option<Url>,
    /// A role to assume on top of the credentials above (cross-account watching).
    pub assume_role: Option<Box<AssumeRole>>,
}

/// `role_arn` (+ `external_id`, `session_name`) of a `kind = "ecr"` entry.
#[derive(Debug, Clone)]
pub struct AssumeRole {
    /// `arn:aws:iam::<account>:role/<name>`.
    pub role_arn: String,
    /// The external id the role's trust policy may require (not a secret, per AWS).
    pub external_id: Option<String>,
    /// The role session name, visible in CloudTrail.
    pub session_name: String,
}

/// `kind = "gcr"` settings.
#[derive(Debug, Clone)]
pub struct GcrConfig {
    /// The Google Cloud project.
    pub project_id: String,
    /// The service-account key JSON; `None` uses Application Default Credentials.
    pub json_key: Option<SecretString>,
    /// A service account to impersonate through the IAM Credentials API.
    pub impersonate_service_account: Option<String>,
    /// The IAM Credentials API endpoint (Private Service Connect, tests).
    pub iam_endpoint: Url,
}

/// `kind = "acr"` settings: an Entra ID identity, all optional (see `registry::acr`).
#[derive(Debug, Clone, Default)]
pub struct AcrConfig {
    /// The Entra tenant; overrides `AZURE_TENANT_ID` for workload identity.
    pub tenant_id: Option<String>,
    /// The app registration (client secret, workload identity, overriding `AZURE_CLIENT_ID`) or the
    /// user-assigned managed identity.
    pub client_id: Option<String>,
    /// The app registration's client secret (read at load).
    pub client_secret: Option<SecretString>,
}

/// One `[[registry]]`, validated.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Unique name, used in events and the CLI.
    pub name: String,
    /// Which API it speaks.
    pub kind: Kind,
    /// Kind-specific settings.
    pub provider: Provider,
    /// Base URL, without a trailing slash (for Docker Hub, the registry API endpoint).
    pub url: Url,
    /// `host[:port]`, as events show it.
    pub host: String,
    /// Basic or token-realm credentials.
    pub credentials: Option<Credentials>,
    /// The watch set.
    pub repositories: Vec<RepoPattern>,
    /// Which tags are reported.
    pub tags: TagFilter,
    /// Poll interval.
    pub interval: Duration,
    /// Requests per second to this registry.
    pub rate_limit: NonZeroU32,
    /// Repositories scanned at once.
    pub concurrency: usize,
    /// `n` sent to `tags/list` and `_catalog`.
    pub page_size: u32,
    /// Whole-request timeout for every HTTP request to this registry.
    pub request_timeout: Duration,
    /// Allow `http://` and self-signed TLS.
    pub insecure: bool,
    /// Enables `POST /hooks/<name>`.
    pub webhook_token: Option<SecretString>,
    /// A docker `config.json` to take credentials from when `username`/`password` are not set.
    pub docker_config: Option<PathBuf>,
    /// Docker Hub's own API (`hub_api_url`), whose tag listing carries digests and push times;
    /// `None` for other kinds, and for a `dockerhub` entry that is not Docker Hub itself.
    pub hub_api: Option<Url>,
    /// Emit `tag.matured` once a reported tag kept its digest this long (`mature_after`).
    pub mature_after: Option<Duration>,
    /// Look up the platforms of each new digest (`platforms`, or implied by `require_platforms`).
    pub platforms: bool,
    /// Report only images that include all of these (`os/arch[/variant]`); empty = all.
    pub require_platforms: Vec<String>,
}

impl RegistryConfig {
    /// The full repository path for `name` as a user or a webhook writes it (see `repositories`).
    pub fn qualified(&self, name: &str) -> String {
        qualified_name(self.kind, &self.provider, name)
    }

    /// Whether the watch set needs the catalog (any glob).
    pub fn needs_catalog(&self) -> bool {
        self.repositories
            .iter()
            .any(|p| matches!(p, RepoPattern::Glob(_)))
    }
}

/// The full repository path for a name as users write it, by the rule of the registry's adapter
/// (Docker Hub's `nginx` is `library/nginx`, GCR's `app` is `<project_id>/app`). Other kinds take
/// names as they are.
fn qualified_name(kind: Kind, provider: &Provider, name: &str) -> String {
    match (kind, provider) {
        (Kind::Dockerhub, _) => dockerhub::qualify(name),
        (_, Provider::Gcr(g)) => gcr::qualify(&g.project_id, name),
        _ => name.to_owned(),
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: String::new(),
        line: None,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    parse(&text)
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw = deserialize(text)?;
    validate::validate(raw, text)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn deserialize(text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned wrappers show up as a private path segment; users never wrote it.
        let path = e
            .path()
            .to_string()
            .replace("$__serde_spanned_private_value.", "")
            .replace(".$__serde_spanned_private_value", "");
        let path = if path == "." { String::new() } else { path };
        toml_error(text, path, e.inner())
    })
}

fn toml_error(text: &str, path: String, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        path,
        line: e.span().map(|s| line_of(text, s.start)),
        message: suggest_key(e.message()),
    }
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a hint with the closest key.
fn suggest_key(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let closest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::levenshtein(field, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min();
    match closest {
        Some((_, key)) => format!("unknown key `{field}`; did you mean `{key}`?"),
        None => format!("unknown key `{field}`{expected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const MINIMAL: &str = r#"
[[registry]]
name = "local"
kind = "oci"
url = "https://registry.example.com"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.daemon.interval, Duration::from_secs(60));
        assert!((c.daemon.jitter - 0.1).abs() < 1e-9);
        assert_eq!(c.daemon.first_run, FirstRun::Baseline);
        assert_eq!(c.daemon.shutdown_timeout, Duration::from_secs(20));
        assert!(c.kafka.is_none());
        let r = &c.registries[0];
        assert_eq!(r.host, "registry.example.com");
        assert_eq!(r.page_size, 1000);
        assert_eq!(r.concurrency, 8);
        assert!(r.needs_catalog(), "default watch set is every repository");
    }

    #[test]
    fn cluster_section_defaults_and_its_errors() {
        let kafka = "[kafka]\nbrokers = \"k:9092\"\ntopic = \"imgs\"\n";
        let c = parse(&format!("{kafka}[cluster]\n{MINIMAL}")).unwrap();
        let cluster = c.cluster.expect("cluster mode");
        assert_eq!(cluster.group, "regwatch");
        assert_eq!(
            cluster.state_topic, "imgs.state",
            "default follows kafka.topic"
        );
        assert_eq!(cluster.session_timeout, Duration::from_secs(10));
        assert!(!cluster.exactly_once);
        assert_eq!(cluster.partitions, 12);
        assert!(
            parse(MINIMAL).unwrap().cluster.is_none(),
            "absent: single node"
        );

        // The contract: [cluster] without [kafka] is a config error naming `cluster`.
        let e = parse(&format!("\n[cluster]\ngroup = \"g\"\n{MINIMAL}")).unwrap_err();
        assert_eq!((e.path.as_str(), e.line), ("cluster", Some(2)));
        assert!(e.message.contains("[kafka]"), "{}", e.message);

        let e = parse(&format!(
            "{kafka}[cluster]\nstate_topic = \"imgs\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.path, "cluster.state_topic");
        let e = parse(&format!(
            "{kafka}[cluster]\nsession_timeout = \"10ms\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.path, "cluster.session_timeout");
        let e = parse(&format!(
            "{kafka}[cluster]\nsesion_timeout = \"10s\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.line),
            ("cluster.sesion_timeout", Some(5))
        );
    }

    #[test]
    fn unknown_key_names_path_line_and_suggestion() {
        let text = "[daemon]\nintervall = \"5s\"\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.path, "daemon.intervall");
        assert_eq!(e.line, Some(2));
        assert!(
            e.message.contains("did you mean `interval`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_regex_is_reported_at_its_line() {
        let text = format!("{MINIMAL}include_tags = ['^v(']\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.path, "registry[0].include_tags[0]");
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("invalid regex"), "{}", e.message);
    }

    #[test]
    fn plain_http_needs_insecure() {
        let text = "[[registry]]\nname = \"a\"\nkind = \"oci\"\nurl = \"http://127.0.0.1:5000\"\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.path, "registry[0].url");
        assert_eq!(e.line, Some(4));
        assert!(parse(&format!("{text}insecure = true\n")).is_ok());
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = parse(&format!("{MINIMAL}{MINIMAL}")).unwrap_err();
        assert_eq!(e.path, "registry[1].name");
        assert_eq!(e.line, Some(7), "the second [[registry]] header");
    }

    #[test]
    fn missing_secret_file_is_reported() {
        let e = parse(&format!(
            "{MINIMAL}username = \"u\"\npassword_file = \"/nonexistent/p\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.path, "registry[0].password_file");
        assert!(e.message.contains("/nonexistent/p"), "{}", e.message);
    }

    #[test]
    fn secret_file_is_read_and_hidden_from_debug() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p");
        std::fs::write(&f, "canary-s3cret\n").unwrap();
        let c = parse(&format!(
            "{MINIMAL}username = \"u\"\npassword_file = \"{}\"\n",
            f.display()
        ))
        .unwrap();
        let creds = c.registries[0].credentials.as_ref().unwrap();
        assert_eq!(creds.password.expose_secret(), "canary-s3cret");
        assert!(!format!("{c:?}").contains("canary-s3cret"));
    }

    #[test]
    fn env_expansion() {
        let env = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(expand_env("p-${A}-$$-$", env).unwrap(), "p-x-$-$");
        assert!(
            expand_env("${B}", env)
                .unwrap_err()
                .contains("B is not set")
        );
        assert!(expand_env("${A", env).is_err());
    }

    fn one(text: &str) -> RegistryConfig {
        parse(text).unwrap().registries.remove(0)
    }

    #[test]
    fn ecr_derives_account_and_region_from_the_url() {
        let r = one(
            "[[registry]]\nname = \"e\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com\"\n",
        );
        let Provider::Ecr(e) = &r.provider else {
            panic!()
        };
        assert_eq!(
            (e.region.as_str(), e.registry_id.as_str()),
            ("eu-west-1", "123456789012")
        );
        assert!(e.keys.is_none(), "no keys: the default AWS chain");
        let err = parse("[[registry]]\nname = \"e\"\nkind = \"ecr\"\nurl = \"https://ecr.example\"\nregion = \"x\"\n").unwrap_err();
        assert_eq!(err.path, "registry[0].registry_id");
        let err = parse("[[registry]]\nname = \"e\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com\"\naccess_key_id = \"AKIA\"\n").unwrap_err();
        assert!(
            err.message
                .contains("both access_key_id and secret_access_key"),
            "{err}"
        );
    }

    #[test]
    fn ecr_role_arn_is_checked_at_load() {
        let ecr = "[[registry]]\nname = \"e\"\nkind = \"ecr\"\nurl = \"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com\"\n";
        let r = one(&format!(
            "{ecr}role_arn = \"arn:aws:iam::210987654321:role/team/reader\"\nexternal_id = \"ext-42\"\n"
        ));
        let Provider::Ecr(e) = &r.provider else {
            panic!()
        };
        let role = e.assume_role.as_ref().expect("role_arn parsed");
        assert_eq!(role.role_arn, "arn:aws:iam::210987654321:role/team/reader");
        assert_eq!(role.external_id.as_deref(), Some("ext-42"));
        assert_eq!(role.session_name, "regwatch", "default session name");
        for arn in [
            "arn:aws-cn:iam::210987654321:role/r",
            "arn:aws-us-gov:iam::210987654321:role/r",
        ] {
            assert!(
                parse(&format!("{ecr}role_arn = \"{arn}\"\n")).is_ok(),
                "{arn}"
            );
        }
        for bad in [
            "arn:aws:iam::21098765432:role/r",
            "arn:aws:iam::210987654321:user/r",
            "arn:aws:sts::210987654321:role/r",
            "arn:aws-xx:iam::210987654321:role/r",
            "arn:aws:iam::210987654321:role/",
            "reader",
        ] {
            let err = parse(&format!("{ecr}role_arn = \"{bad}\"\n")).unwrap_err();
            assert_eq!(err.path, "registry[0].role_arn", "{bad}");
            assert_eq!(err.line, Some(1), "{bad}");
            assert!(err.message.contains("invalid role ARN"), "{err}");
        }
        let err = parse(&format!(
            "{ecr}role_arn = \"arn:aws:iam::210987654321:role/r\"\nsession_name = \"has space\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.path, "registry[0].session_name");
        let err = parse(&format!("{ecr}external_id = \"ext-42\"\n")).unwrap_err();
        assert_eq!(err.path, "registry[0].external_id");
        assert!(err.message.contains("needs role_arn"), "{err}");
        let oci = "[[registry]]\nname = \"o\"\nkind = \"oci\"\nurl = \"https://r.example\"\n";
        let err = parse(&format!(
            "{oci}role_arn = \"arn:aws:iam::210987654321:role/r\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.path, "registry[0].role_arn");
        assert!(err.message.contains("only to kind = \"ecr\""), "{err}");
    }

    #[test]
    fn keys_of_another_kind_are_refused() {
        let e = parse(&format!("{MINIMAL}region = \"us-east-1\"\n")).unwrap_err();
        assert_eq!(e.path, "registry[0].region");
        assert!(e.message.contains("only to kind = \"ecr\""), "{e}");
    }

    #[test]
    fn dockerhub_maps_the_url_and_qualifies_official_images() {
        let r = one(
            "[[registry]]\nname = \"hub\"\nkind = \"dockerhub\"\nurl = \"https://registry.hub.docker.com\"\nrepositories = [\"nginx\", \"bitnami/redis\"]\n",
        );
        assert_eq!(r.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(r.host, "docker.io");
        let names: Vec<&str> = r.repositories.iter().map(RepoPattern::as_str).collect();
        assert_eq!(names, vec!["library/nginx", "bitnami/redis"]);
        assert_eq!(
            r.qualified("redis"),
            "library/redis",
            "webhooks and the CLI qualify the same way"
        );
        assert_eq!(r.qualified("bitnami/redis"), "bitnami/redis");
        let e = parse("[[registry]]\nname = \"hub\"\nkind = \"dockerhub\"\nurl = \"https://registry.hub.docker.com\"\nrepositories = [\"bitnami/*\"]\n").unwrap_err();
        assert!(e.message.contains("no catalog"), "{e}");
    }

    #[test]
    fn gcr_key_is_optional_but_checked() {
        let c = parse("[[registry]]\nname = \"g\"\nkind = \"gcr\"\nurl = \"https://gcr.io\"\nproject_id = \"p\"\n").unwrap();
        let Provider::Gcr(g) = &c.registries[0].provider else {
            panic!()
        };
        assert!(
            g.json_key.is_none(),
            "no key: Application Default Credentials"
        );
        let e = parse("[[registry]]\nname = \"g\"\nkind = \"gcr\"\nurl = \"https://gcr.io\"\nproject_id = \"p\"\njson_key = \"{}\"\n").unwrap_err();
        assert!(e.message.contains("not a service-account key"), "{e}");
    }

    #[test]
    fn bad_duration_and_type_errors() {
        let e = parse(&format!("{MINIMAL}interval = \"soon\"\n")).unwrap_err();
        assert_eq!(e.path, "registry[0].interval");
        let e = parse(&format!("{MINIMAL}concurrency = \"8\"\n")).unwrap_err();
        assert_eq!(e.path, "registry[0].concurrency");
        assert_eq!(e.line, Some(6));
    }

    #[test]
    fn shipped_configs_parse() {
        let example =
            include_str!("../../config/regwatch.example.toml").replace("${REGISTRY_PASSWORD}", "x");
        let c = parse(&example).unwrap();
        assert_eq!(c.kafka.unwrap().properties.len(), 0);
        assert_eq!(c.registries[0].tags.include.len(), 1);
        parse(include_str!("../../config/quickstart.toml")).unwrap();
    }

    #[test]
    fn globs_stay_within_a_segment() {
        let p = RepoPattern::parse("team/*").unwrap();
        assert!(p.matches("team/app"));
        assert!(!p.matches("team/sub/app"));
        assert!(!p.matches("other/app"));
        assert!(RepoPattern::parse("**").unwrap().matches("a/b/c"));
    }
    const ACR: &str =
        "[[registry]]\nname = \"a\"\nkind = \"acr\"\nurl = \"https://r.azurecr.io\"\n";

    #[test]
    fn acr_entra_keys_are_checked_at_load() {
        let ok = parse(&format!(
            "{ACR}tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"canary-entra\"\n"
        ))
        .unwrap();
        let Provider::Acr(a) = &ok.registries[0].provider else {
            panic!("kind acr has its own settings")
        };
        assert_eq!(
            a.client_secret.as_ref().unwrap().expose_secret(),
            "canary-entra"
        );
        assert!(!format!("{ok:?}").contains("canary-entra"));
        assert!(parse(&format!("{ACR}client_id = \"user-assigned\"\n")).is_ok());

        let e = parse(&format!("{ACR}client_id = \"c\"\nclient_secret = \"s\"\n")).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.line),
            ("registry[0].tenant_id", Some(1))
        );
        let e = parse(&format!(
            "{ACR}tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nusername = \"u\"\npassword = \"p\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.path, "registry[0].client_secret");
        let e = parse(&format!(
            "{ACR}tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nclient_secret_file = \"/nonexistent\"\n"
        ))
        .unwrap_err();
        assert!(e.path.starts_with("registry[0].client_secret"), "{e:?}");
        let e = parse(&format!("{MINIMAL}tenant_id = \"t\"\n")).unwrap_err();
        assert_eq!(e.path, "registry[0].tenant_id");
        assert!(
            e.message.contains("only to kind = \"acr\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn cloud_identities_go_only_to_their_cloud() {
        let gcr = |url: &str| {
            format!(
                "[[registry]]\nname = \"g\"\nkind = \"gcr\"\ninsecure = true\nurl = \"{url}\"\nproject_id = \"p\"\n"
            )
        };
        let acr = |url: &str| {
            format!(
                "[[registry]]\nname = \"a\"\nkind = \"acr\"\ninsecure = true\nurl = \"{url}\"\n"
            )
        };
        let loopback = [
            "http://127.0.0.1:5000",
            "http://127.9.8.7:1",
            "http://localhost:5000",
            "http://[::1]:5000",
        ];
        for url in [
            "https://gcr.io",
            "https://eu.gcr.io",
            "https://asia.gcr.io/",
            "https://europe-west1-docker.pkg.dev",
            "https://us-docker.pkg.dev",
        ]
        .iter()
        .chain(&loopback)
        {
            assert!(parse(&gcr(url)).is_ok(), "gcr {url}");
        }
        for url in [
            "https://r.azurecr.io",
            "https://R.AzureCR.io",
            "https://r.azurecr.cn",
            "https://r.azurecr.us",
            "https://r.westeurope.data.azurecr.io",
        ]
        .iter()
        .chain(&loopback)
        {
            assert!(parse(&acr(url)).is_ok(), "acr {url}");
        }
        let refused = |text: String, what: &str| {
            let e = parse(&text).unwrap_err();
            assert_eq!(
                (e.path.as_str(), e.line),
                ("registry[0].url", Some(5)),
                "{what}"
            );
            e.message
        };
        for url in [
            "https://gcr.io.evil.example",
            "https://evilgcr.io",
            "https://a.b.gcr.io",
            "https://docker.pkg.dev",
            "https://pkg.dev",
            "https://x.europe-west1-docker.pkg.dev",
            "https://europe-west1-docker.pkg.dev.evil.example",
            "https://10.0.0.1",
            "https://r.azurecr.io",
            "https://registry.example.com/gcr.io",
        ] {
            let m = refused(gcr(url), url);
            assert!(m.contains("must be a Google registry"), "{url}: {m}");
        }
        for url in [
            "https://azurecr.io",
            "https://r.azurecr.io.evil.example",
            "https://evilazurecr.io",
            "https://r.azurecr.de",
            "https://gcr.io",
            "https://192.168.1.10",
            "https://localhost.evil.example",
        ] {
            let m = refused(acr(url), url);
            assert!(m.contains("must be an Azure login server"), "{url}: {m}");
        }
        // Other kinds go anywhere.
        assert!(
            parse("[[registry]]\nname = \"o\"\nkind = \"oci\"\nurl = \"https://r.example\"\n")
                .is_ok()
        );
    }

    #[test]
    fn empty_secrets_are_refused_at_their_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let newline = dir.path().join("newline");
        std::fs::write(&newline, "\n").unwrap();
        for (extra, path) in [
            ("webhook_token = \"\"\n", "registry[0].webhook_token"),
            ("webhook_token = \" \\t \"\n", "registry[0].webhook_token"),
            (
                &format!("webhook_token_file = \"{}\"\n", newline.display()),
                "registry[0].webhook_token_file",
            ),
            (
                "username = \"u\"\npassword = \"\"\n",
                "registry[0].password",
            ),
        ] {
            let e = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
            let line = MINIMAL.lines().count() + extra.lines().count();
            assert_eq!((e.path.as_str(), e.line), (path, Some(line)), "{extra}");
            assert!(e.message.contains("empty"), "{}", e.message);
        }
        // A Kafka property may be empty: librdkafka reads some that way.
        let c = parse(&format!(
            "[kafka]\nbrokers = \"b:9092\"\n[kafka.properties]\n\"ssl.endpoint.identification.algorithm\" = \"\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.kafka.unwrap().properties.len(), 1);
    }

    #[test]
    fn empty_hub_api_url_lists_docker_hub_through_tags_list() {
        // Egress allowlists often admit Docker's pull hosts (registry-1.docker.io, auth.docker.io)
        // and not hub.docker.com, which Docker's allowlist names separately: an unreachable Hub
        // API fails every scan (unreachable is no refusal), so there must be a way to turn it off.
        let hub = "[[registry]]\nname = \"hub\"\nkind = \"dockerhub\"\nurl = \"https://registry.hub.docker.com\"\nrepositories = [\"nginx\"]\nhub_api_url = \"\"\n";
        assert!(one(hub).hub_api.is_none());
    }

    #[test]
    fn hub_api_url_defaults_for_docker_hub_only() {
        let hub = "[[registry]]\nname = \"hub\"\nkind = \"dockerhub\"\nurl = \"https://registry.hub.docker.com\"\nrepositories = [\"nginx\"]\n";
        assert_eq!(
            one(hub).hub_api.unwrap().as_str(),
            "https://hub.docker.com/",
            "Docker Hub lists through its own API by default"
        );
        let mirror = "[[registry]]\nname = \"m\"\nkind = \"dockerhub\"\nurl = \"https://mirror.example.com\"\nrepositories = [\"nginx\"]\n";
        assert!(one(mirror).hub_api.is_none(), "a mirror is not Docker Hub");
        let set = one(&format!(
            "{mirror}hub_api_url = \"https://hub.example.com/\"\n"
        ));
        assert_eq!(set.hub_api.unwrap().as_str(), "https://hub.example.com/");
        assert!(one(MINIMAL).hub_api.is_none());

        let e = parse(&format!("{mirror}hub_api_url = \"http://127.0.0.1:1\"\n")).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.line),
            ("registry[0].hub_api_url", Some(6))
        );
        assert!(e.message.contains("https://"), "{}", e.message);
        let e = parse(&format!(
            "{MINIMAL}hub_api_url = \"https://hub.docker.com\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.path, "registry[0].hub_api_url");
        assert!(
            e.message.contains("only to kind = \"dockerhub\""),
            "{}",
            e.message
        );
        let e = parse(&format!(
            "{hub}hub_api_url = \"https://u:p@hub.docker.com\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.path, "registry[0].hub_api_url");
    }

    #[test]
    fn versions_table_is_parsed_once_and_checked() {
        let r = one(&format!(
            "{MINIMAL}\n[registry.versions]\nscheme = \"semver\"\nrange = \">=1.2, <2\"\nonly_newer = true\n"
        ));
        let v = r.tags.versions.expect("scheme semver gives a policy");
        assert_eq!(
            v.range().map(ToString::to_string).as_deref(),
            Some(">=1.2, <2")
        );
        assert!(v.only_newer() && !v.prerelease());
        assert!(one(MINIMAL).tags.versions.is_none(), "default scheme none");
        let none = one(&format!(
            "{MINIMAL}[registry.versions]\nscheme = \"none\"\n"
        ));
        assert!(none.tags.versions.is_none());

        let e = parse(&format!(
            "{MINIMAL}[registry.versions]\nscheme = \"semver\"\nrange = \">=1.2, <<2\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.line),
            ("registry[0].versions.range", Some(8))
        );
        assert!(e.message.contains("invalid version range"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}[registry.versions]\nprerelease = true\n"
        ))
        .unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.line),
            ("registry[0].versions.prerelease", Some(7))
        );
        assert!(e.message.contains("needs scheme = \"semver\""), "{e}");
        let e = parse(&format!(
            "{MINIMAL}[registry.versions]\nscheme = \"calver\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.path, "registry[0].versions.scheme");
        let e = parse(&format!(
            "{MINIMAL}[registry.versions]\nonly_newest = true\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("did you mean `only_newer`"), "{e}");
    }
}
