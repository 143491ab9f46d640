//! The TOML configuration: schema, `${VAR}` and `*_file` secrets, validation, and the typed [`Config`].
//!
//! Everything that can be decided once is decided here: regexes and globs are compiled, URLs parsed,
//! secrets read. Errors carry the key path and the line so that a user can fix the file at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobMatcher;
use regex::Regex;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de};
use toml::Spanned;
use url::Url;

use crate::registry::{dockerhub, ecr, gcr};

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
}

impl TagFilter {
    /// Whether changes to `tag` are reported.
    pub fn selects(&self, tag: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(tag)))
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
}

/// `kind = "gcr"` settings.
#[derive(Debug, Clone)]
pub struct GcrConfig {
    /// The Google Cloud project.
    pub project_id: String,
    /// The service-account key JSON.
    pub json_key: SecretString,
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

// ---------------------------------------------------------------------------------------------------
// Raw schema. Field-level parsing (durations, regexes, env expansion, secret files) happens inside
// deserialization, so toml attaches the line and serde_path_to_error the key path to every failure.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    kafka: Option<RawKafka>,
    #[serde(default)]
    registry: Vec<Spanned<RawRegistry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    state_dir: PathBuf,
    interval: Dur,
    jitter: Percent,
    first_run: FirstRun,
    emit_removed: bool,
    admin_listen: SocketAddr,
}

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            state_dir: PathBuf::from("/var/lib/regwatch"),
            interval: Dur(Duration::from_secs(60)),
            jitter: Percent(0.1),
            first_run: FirstRun::Baseline,
            emit_removed: false,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9188)),
        }
    }
}

fn default_topic() -> String {
    "regwatch.images".into()
}
fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    -1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: Expanded,
    #[serde(default = "default_topic")]
    topic: String,
    #[serde(default = "default_true")]
    create_topic: bool,
    #[serde(default = "default_partitions")]
    partitions: i32,
    #[serde(default = "default_replication")]
    replication_factor: i32,
    #[serde(default)]
    properties: BTreeMap<String, Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    name: String,
    kind: Spanned<Kind>,
    url: Spanned<String>,
    username: Option<Expanded>,
    password: Option<Secret>,
    password_file: Option<FileSecret>,
    #[serde(default)]
    repositories: Vec<Pattern>,
    #[serde(default)]
    include_tags: Vec<TagRegex>,
    #[serde(default)]
    exclude_tags: Vec<TagRegex>,
    #[serde(default)]
    mutable_tags: Vec<String>,
    interval: Option<Dur>,
    rate_limit: Option<NonZeroU32>,
    concurrency: Option<usize>,
    page_size: Option<u32>,
    request_timeout: Option<Dur>,
    #[serde(default)]
    insecure: bool,
    webhook_token: Option<Secret>,
    webhook_token_file: Option<FileSecret>,
    // ecr
    region: Option<String>,
    access_key_id: Option<Expanded>,
    secret_access_key: Option<Secret>,
    secret_access_key_file: Option<FileSecret>,
    registry_id: Option<String>,
    endpoint: Option<String>,
    // gcr
    project_id: Option<String>,
    json_key: Option<Secret>,
    json_key_file: Option<FileSecret>,
}

/// A humantime duration such as `30s` or `5m`.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let dur = humantime::parse_duration(&s).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?} ({e}); use e.g. \"30s\", \"5m\""
            ))
        })?;
        if dur.is_zero() {
            return Err(de::Error::custom("duration must be greater than zero"));
        }
        Ok(Dur(dur))
    }
}

/// A percentage such as `"10%"`, stored as a fraction.
struct Percent(f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let number = s
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid percentage {s:?}; use e.g. \"10%\" (0% to 100%)"
                ))
            })?;
        Ok(Percent(number / 100.0))
    }
}

/// A regex, compiled at load.
struct TagRegex(Regex);

impl<'de> Deserialize<'de> for TagRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(TagRegex)
            .map_err(|e| de::Error::custom(format!("invalid regex {s:?}: {e}")))
    }
}

/// A repository name or glob, compiled at load.
struct Pattern(RepoPattern);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("empty repository name"));
        }
        RepoPattern::parse(&s)
            .map(Pattern)
            .map_err(de::Error::custom)
    }
}

/// A string with `${VAR}` expanded from the environment.
struct Expanded(String);

impl<'de> Deserialize<'de> for Expanded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        expand_env(&s, |k| std::env::var(k).ok())
            .map(Expanded)
            .map_err(de::Error::custom)
    }
}

/// A secret value with `${VAR}` expanded; never printed, not even in an error.
struct Secret(SecretString);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_string(SecretVisitor)?;
        // An invalid `${…}` would be quoted back; the env var name of a missing one is no secret.
        expand_env(&s, |k| std::env::var(k).ok())
            .map(|v| Secret(v.into()))
            .map_err(|e| {
                if e.starts_with("invalid variable name") {
                    de::Error::custom(
                        "invalid ${…} in a secret value (not shown); write $$ for a literal $",
                    )
                } else {
                    de::Error::custom(e)
                }
            })
    }
}

/// Accepts a string; anything else is refused by its type alone. serde's default messages quote
/// the value ("invalid type: integer `12345`"), and `password = 12345` is still a password.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>(&self, what: &str) -> Result<String, E> {
        Err(E::custom(format!(
            "invalid type: {what} (value not shown), expected a string: quote the secret"
        )))
    }
}

impl<'de> de::Visitor<'de> for SecretVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        self.refuse("boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<String, E> {
        self.refuse("integer")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        self.refuse("float")
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<String, E> {
        self.refuse("bytes")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        // TOML datetimes arrive as a map; tables too.
        self.refuse("table or datetime")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        self.refuse("array")
    }
}

/// A secret read from the file a path names, trailing newline removed.
struct FileSecret(SecretString);

impl<'de> Deserialize<'de> for FileSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::from(String::deserialize(d)?);
        let mut text = std::fs::read_to_string(&path).map_err(|e| {
            de::Error::custom(format!("cannot read secret file {}: {e}", path.display()))
        })?;
        let trimmed = text.trim_end_matches(['\n', '\r']).len();
        text.truncate(trimmed);
        Ok(FileSecret(text.into()))
    }
}

/// Expands `${NAME}` from `lookup`; `$$` is a literal `$`. An unset variable is an error.
pub fn expand_env(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${ in value".to_string())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name ${{{name}}}"));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------

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
    validate(raw, text)
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
            .replace("$__serde_spanned_private_value.", "");
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

fn validate(raw: RawConfig, text: &str) -> Result<Config, ConfigError> {
    let daemon = DaemonConfig {
        state_dir: raw.daemon.state_dir,
        interval: raw.daemon.interval.0,
        jitter: raw.daemon.jitter.0,
        first_run: raw.daemon.first_run,
        emit_removed: raw.daemon.emit_removed,
        admin_listen: raw.daemon.admin_listen,
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
    let mut host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(err("url", url_line, "URL has no host".into())),
    };
    let mut url = url;
    if kind == Kind::Dockerhub
        && let Some(api) = dockerhub::api_endpoint(&host)
    {
        url = api;
        host = dockerhub::EVENT_HOST.into();
    }

    let provider = provider(&r, kind, &url, &err, table_line)?;
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
    })
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
    only_for("project_id", r.project_id.is_some(), Kind::Gcr)?;
    only_for("json_key", r.json_key.is_some(), Kind::Gcr)?;
    only_for("json_key_file", r.json_key_file.is_some(), Kind::Gcr)?;
    match kind {
        Kind::Ecr => ecr_provider(r, url, err, line).map(Provider::Ecr),
        Kind::Gcr => {
            let project_id = r
                .project_id
                .clone()
                .ok_or_else(|| err("project_id", line, "kind gcr needs project_id".into()))?;
            let json_key = match (&r.json_key, &r.json_key_file) {
                (Some(k), None) => k.0.clone(),
                (None, Some(f)) => f.0.clone(),
                (Some(_), Some(_)) => {
                    return Err(err(
                        "json_key",
                        line,
                        "set either json_key or json_key_file, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(err(
                        "json_key",
                        line,
                        "kind gcr needs json_key or json_key_file (a service-account key)".into(),
                    ));
                }
            };
            gcr::check_key(&json_key).map_err(|e| err("json_key", line, e))?;
            Ok(Provider::Gcr(GcrConfig {
                project_id,
                json_key,
            }))
        }
        _ => Ok(Provider::Distribution),
    }
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
    Ok(EcrConfig {
        region,
        registry_id,
        keys,
        endpoint,
    })
}

fn one_secret(
    inline: Option<Secret>,
    file: Option<FileSecret>,
    key: &str,
    err: &impl Fn(&str, usize, String) -> ConfigError,
    line: usize,
) -> Result<Option<SecretString>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(err(
            key,
            line,
            format!("set either {key} or {key}_file, not both"),
        )),
        (Some(s), None) => Ok(Some(s.0)),
        (None, Some(f)) => Ok(Some(f.0)),
        (None, None) => Ok(None),
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
        assert!(c.kafka.is_none());
        let r = &c.registries[0];
        assert_eq!(r.host, "registry.example.com");
        assert_eq!(r.page_size, 1000);
        assert_eq!(r.concurrency, 8);
        assert!(r.needs_catalog(), "default watch set is every repository");
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
    fn gcr_needs_a_key_and_prefixes_the_project() {
        let e = parse("[[registry]]\nname = \"g\"\nkind = \"gcr\"\nurl = \"https://gcr.io\"\nproject_id = \"p\"\n").unwrap_err();
        assert_eq!(e.path, "registry[0].json_key");
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
            include_str!("../config/regwatch.example.toml").replace("${REGISTRY_PASSWORD}", "x");
        let c = parse(&example).unwrap();
        assert_eq!(c.kafka.unwrap().properties.len(), 0);
        assert_eq!(c.registries[0].tags.include.len(), 1);
        parse(include_str!("../config/quickstart.toml")).unwrap();
    }

    #[test]
    fn globs_stay_within_a_segment() {
        let p = RepoPattern::parse("team/*").unwrap();
        assert!(p.matches("team/app"));
        assert!(!p.matches("team/sub/app"));
        assert!(!p.matches("other/app"));
        assert!(RepoPattern::parse("**").unwrap().matches("a/b/c"));
    }
}
