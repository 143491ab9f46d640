//! The TOML schema as written. Field-level parsing (durations, regexes, env expansion, secret
//! files) happens inside deserialization, so toml attaches the line and serde_path_to_error the key
//! path to every failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

use super::secrets::{CredentialId, Expanded, FileSecret, PropertyValue, Secret};
use super::{FirstRun, Kind, RepoPattern};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    pub(super) kafka: Option<RawKafka>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    pub(super) registry: Vec<Spanned<RawRegistry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDaemon {
    pub(super) state_dir: PathBuf,
    pub(super) interval: Dur,
    pub(super) jitter: Percent,
    pub(super) first_run: FirstRun,
    pub(super) emit_removed: bool,
    pub(super) admin_listen: SocketAddr,
    pub(super) shutdown_timeout: Dur,
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
            // Well under the unit's TimeoutStopSec (40 s), which kills what is still running.
            shutdown_timeout: Dur(Duration::from_secs(20)),
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
pub(super) struct RawKafka {
    pub(super) brokers: Expanded,
    #[serde(default = "default_topic")]
    pub(super) topic: String,
    #[serde(default = "default_true")]
    pub(super) create_topic: bool,
    #[serde(default = "default_partitions")]
    pub(super) partitions: i32,
    #[serde(default = "default_replication")]
    pub(super) replication_factor: i32,
    #[serde(default)]
    pub(super) properties: BTreeMap<String, PropertyValue>,
}

fn default_group() -> String {
    "regwatch".into()
}
fn default_session_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_state_partitions() -> i32 {
    12
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default = "default_group")]
    pub(super) group: String,
    pub(super) state_topic: Option<String>,
    #[serde(default = "default_session_timeout")]
    pub(super) session_timeout: Dur,
    #[serde(default)]
    pub(super) exactly_once: bool,
    #[serde(default = "default_state_partitions")]
    pub(super) partitions: i32,
    #[serde(default = "default_true")]
    pub(super) verify_state_topic: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) name: String,
    pub(super) kind: Spanned<Kind>,
    pub(super) url: Spanned<String>,
    pub(super) username: Option<Expanded>,
    pub(super) password: Option<Secret>,
    pub(super) password_file: Option<FileSecret>,
    #[serde(default)]
    pub(super) repositories: Vec<Pattern>,
    #[serde(default)]
    pub(super) include_tags: Vec<TagRegex>,
    #[serde(default)]
    pub(super) exclude_tags: Vec<TagRegex>,
    #[serde(default)]
    pub(super) mutable_tags: Vec<String>,
    #[serde(default)]
    pub(super) signature_tags: bool,
    pub(super) mature_after: Option<Dur>,
    pub(super) platforms: Option<Spanned<bool>>,
    pub(super) require_platforms: Option<Spanned<Vec<PlatformName>>>,
    pub(super) allow_pulls: Option<Spanned<bool>>,
    pub(super) interval: Option<Dur>,
    pub(super) rate_limit: Option<NonZeroU32>,
    pub(super) concurrency: Option<usize>,
    pub(super) page_size: Option<u32>,
    pub(super) request_timeout: Option<Dur>,
    #[serde(default)]
    pub(super) insecure: bool,
    pub(super) webhook_token: Option<Secret>,
    pub(super) webhook_token_file: Option<FileSecret>,
    pub(super) docker_config: Option<Spanned<Expanded>>,
    // ecr
    pub(super) region: Option<String>,
    pub(super) access_key_id: Option<CredentialId>,
    pub(super) secret_access_key: Option<Secret>,
    pub(super) secret_access_key_file: Option<FileSecret>,
    pub(super) registry_id: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) role_arn: Option<String>,
    pub(super) external_id: Option<String>,
    pub(super) session_name: Option<String>,
    // gcr
    pub(super) project_id: Option<String>,
    pub(super) json_key: Option<Secret>,
    pub(super) json_key_file: Option<FileSecret>,
    pub(super) impersonate_service_account: Option<String>,
    pub(super) iam_endpoint: Option<String>,
    // acr
    pub(super) tenant_id: Option<Expanded>,
    pub(super) client_id: Option<Expanded>,
    pub(super) client_secret: Option<Secret>,
    pub(super) client_secret_file: Option<FileSecret>,
    // dockerhub
    pub(super) hub_api_url: Option<Spanned<String>>,
    // version awareness
    pub(super) versions: Option<RawVersions>,
}

/// `[registry.versions]`: the keys as written; `validate` turns them into a `VersionPolicy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVersions {
    #[serde(default)]
    pub(super) scheme: Scheme,
    pub(super) range: Option<Spanned<Range>>,
    pub(super) prerelease: Option<Spanned<bool>>,
    pub(super) only_newer: Option<Spanned<bool>>,
}

/// `versions.scheme`.
#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Scheme {
    #[default]
    None,
    Semver,
}

/// A semver requirement such as `">=1.2, <2"`, parsed at load.
pub(super) struct Range(pub(super) semver::VersionReq);

impl<'de> Deserialize<'de> for Range {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        semver::VersionReq::parse(&s).map(Range).map_err(|e| {
            de::Error::custom(format!(
                "invalid version range {s:?} ({e}); use e.g. \">=1.2, <2\""
            ))
        })
    }
}

/// A humantime duration such as `30s` or `5m`.
pub(super) struct Dur(pub(super) Duration);

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
pub(super) struct Percent(pub(super) f64);

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
pub(super) struct TagRegex(pub(super) Regex);

impl<'de> Deserialize<'de> for TagRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(TagRegex)
            .map_err(|e| de::Error::custom(format!("invalid regex {s:?}: {e}")))
    }
}

/// A repository name or glob, compiled at load.
pub(super) struct Pattern(pub(super) RepoPattern);

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

/// A platform as `os/arch[/variant]` (`linux/arm64`, `linux/arm/v7`), written as registries'
/// indexes name it: lowercase letters, digits, `.`, `_` and `-`.
pub(super) struct PlatformName(pub(super) String);

impl<'de> Deserialize<'de> for PlatformName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parts: Vec<&str> = s.split('/').collect();
        let valid = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !valid {
            return Err(de::Error::custom(format!(
                "invalid platform {s:?}; use os/arch[/variant] in lowercase, e.g. \"linux/arm64\" or \"linux/arm/v7\""
            )));
        }
        Ok(PlatformName(s))
    }
}
