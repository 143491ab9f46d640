//! Credentials from a Docker `config.json`, or a Kubernetes `kubernetes.io/dockerconfigjson`
//! secret (its `.dockerconfigjson` key holds the same JSON): `auths`, `credHelpers` and
//! `credsStore`, looked up by the registry's host the way docker/cli does.
//!
//! The file is re-read when it changes (Kubernetes rotates a mounted secret by swapping a
//! symlink): every [`CredentialSource::credential`] call compares the resolved file's inode,
//! length and mtime with the parsed one. After a change the file is the only truth: a file that
//! no longer parses, or no longer names the registry, gives `NoCredentials` with the reason; the
//! credentials read before the rotation are never used again, since a rotation usually revokes
//! them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::RegistryError;
use super::auth::{Credential, CredentialSource, jwt_lifetime};
use super::credential_cache::CredentialCache;
use super::dockerhub;
use crate::config::{Credentials, RegistryConfig};

/// The key Docker files Docker Hub's credentials under, whatever host the Hub is reached at.
pub const HUB_KEY: &str = "https://index.docker.io/v1/";
/// How long a credential helper may take before it is killed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a helper's answer is reused when its secret carries no expiry (not a JWT with `exp`).
pub const HELPER_DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The Username a helper answers with when the Secret is an identity token (docker/cli's
/// `tokenUsername` in cli/config/credentials/native_store.go).
const TOKEN_USERNAME: &str = "<token>";
/// A docker config (a Kubernetes secret holds at most 1 MiB) is smaller than this.
const FILE_CAP: u64 = 4 * 1024 * 1024;
/// A helper's answer is small; anything bigger is not one.
const HELPER_OUTPUT_CAP: usize = 64 * 1024;

/// The key this registry's credentials are filed under: `https://index.docker.io/v1/` for Docker
/// Hub's hosts, else `host[:port]` as docker/cli's `ConvertToHostname` yields it. It is also what
/// a credential helper gets on stdin, as Docker sends it. By host, not kind: a dockerhub entry
/// pointed at a mirror must not receive the Hub password (docker/cli picks the key from the
/// image reference's host too).
pub fn server_key(host: &str) -> String {
    if dockerhub::api_endpoint(host).is_some() {
        HUB_KEY.to_owned()
    } else {
        host.to_owned()
    }
}

/// docker/cli's `credentials.ConvertToHostname`: `https://host:port/v1/` → `host:port`,
/// `host/path` → `host`. The port is kept as written, a scheme's default one too (Go's url.Parse
/// keeps it): `http://host:80` names another registry than `https://host`. Hostnames compare
/// case-insensitively, as the config's host is lowercase.
fn convert_to_hostname(key: &str) -> String {
    if let Some((_, rest)) = key.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next(),
            None => host_port.split(':').next(),
        };
        if host.is_some_and(|h| !h.is_empty()) && url::Url::parse(key).is_ok() {
            return host_port.trim_end_matches(':').to_ascii_lowercase();
        }
    }
    key.split('/').next().unwrap_or_default().to_owned()
}

/// Whether the file's `key` names the registry filed under `server`.
fn key_matches(key: &str, server: &str) -> bool {
    if key == server {
        return true;
    }
    let host = convert_to_hostname(key);
    if server == HUB_KEY {
        dockerhub::api_endpoint(&host).is_some()
    } else {
        host == server
    }
}

/// `~/.docker/config.json`, as far as credentials go (docker/cli `configfile.ConfigFile`).
#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// One `auths` entry (docker/cli `types.AuthConfig`); `email` and other fields are ignored.
#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What the file says for one registry.
#[derive(Clone)]
enum Lookup {
    /// A credential written in `auths`.
    Static(Credential, &'static str),
    /// A helper to run; `store` when it is the default `credsStore`.
    Helper { name: String, store: bool },
}

impl Lookup {
    fn describe(&self) -> String {
        match self {
            Lookup::Static(_, what) => format!("docker config: {what}"),
            Lookup::Helper { name, store: false } => format!("docker config: credHelper {name}"),
            Lookup::Helper { name, store: true } => format!("docker config: credsStore {name}"),
        }
    }
}

/// Reads `path` and finds the credentials for `server`. Errors name the file and the position,
/// never a value.
fn lookup(path: &Path, server: &str) -> Result<Lookup, String> {
    let text = read_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: File = serde_json::from_slice(&text).map_err(|e| {
        // serde's message may quote a value (a password of the wrong type): give the position.
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "is not valid JSON"
            }
            _ => "does not have the config.json layout (auths, credHelpers, credsStore)",
        };
        format!(
            "{} {what} (at line {} column {})",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    resolve(file, server).map_err(|e| format!("{}: {e}", path.display()))
}

/// The file's bytes, if it is a regular file of at most [`FILE_CAP`]: a FIFO would block the
/// read (and the thread) forever, `/dev/zero` would fill memory.
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, Read};
    // metadata() follows symlinks (Kubernetes mounts are symlinks) and does not open the file.
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::other("not a regular file"));
    }
    let mut text = Vec::new();
    std::fs::File::open(path)?
        .take(FILE_CAP + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > FILE_CAP {
        return Err(Error::other(format!(
            "larger than {} MiB",
            FILE_CAP / (1024 * 1024)
        )));
    }
    Ok(text)
}

/// docker/cli's precedence: `credHelpers[host]`, then `credsStore`, then `auths`
/// (cli/config/configfile `getConfiguredCredentialStore`).
fn resolve(file: File, server: &str) -> Result<Lookup, String> {
    let helper = file
        .cred_helpers
        .get(server)
        .or_else(|| {
            file.cred_helpers
                .iter()
                .find(|(k, _)| key_matches(k, server))
                .map(|(_, v)| v)
        })
        .map(|name| (name.clone(), false))
        .or_else(|| {
            file.creds_store
                .clone()
                .filter(|s| !s.is_empty())
                .map(|s| (s, true))
        });
    if let Some((name, store)) = helper {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "credential helper name {name:?} is not a plain program suffix"
            ));
        }
        return Ok(Lookup::Helper { name, store });
    }
    let entry = match file.auths.get(server) {
        Some(e) => e,
        None => file
            .auths
            .iter()
            .find(|(k, _)| key_matches(k, server))
            .map(|(_, e)| e)
            .ok_or_else(|| format!("no entry for {server} in auths, credHelpers or credsStore"))?,
    };
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    // As Docker: an identity token is an OAuth2 refresh token for the realm, and wins.
    if let Some(token) = nonempty(&entry.identitytoken) {
        return Ok(Lookup::Static(
            Credential::RefreshToken(token.into()),
            "identity token",
        ));
    }
    // docker/cli's decodeAuth: `auth` is base64 "user:password" and overrides the two fields.
    let (username, password) = match nonempty(&entry.auth) {
        Some(auth) => {
            let raw = BASE64
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("auth for {server} is not valid base64"))?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| format!("auth for {server} does not decode to user:password"))?;
            (u.to_owned(), p.trim_matches('\0').to_owned())
        }
        None => match (nonempty(&entry.username), nonempty(&entry.password)) {
            (Some(u), Some(p)) => (u, p),
            _ => {
                return Err(format!(
                    "the entry for {server} has no auth, username/password or identitytoken"
                ));
            }
        },
    };
    Ok(Lookup::Static(
        Credential::Basic(Credentials {
            username,
            password: password.into(),
        }),
        "auths",
    ))
}

/// Checks at config load that `path` parses and names the registry filed under `server`.
pub fn validate(path: &Path, server: &str) -> Result<(), String> {
    lookup(path, server).map(|_| ())
}

/// The file's identity: a changed inode (a swapped symlink), length or mtime means re-read it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // metadata() follows symlinks: the stamp is the resolved file's.
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.modified().ok(),
    })
}

struct Parsed {
    stamp: Option<Stamp>,
    lookup: Result<Lookup, String>,
}

/// A registry's credentials from a docker config file, re-read when it changes.
pub struct DockerConfigSource {
    path: PathBuf,
    server: String,
    parsed: Mutex<Parsed>,
    /// Helpers' answers by helper name: one run for the scans asking together, and a failure
    /// shared by those asking right after.
    answers: CredentialCache<String, Credential>,
}

impl fmt::Debug for DockerConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfigSource")
            .field("path", &self.path)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl DockerConfigSource {
    /// A source reading `path` for the registry filed under `server` (see [`server_key`]).
    pub fn new(path: PathBuf, server: String) -> Self {
        DockerConfigSource {
            path,
            server,
            parsed: Mutex::new(Parsed {
                stamp: None,
                lookup: Err("not read yet".into()),
            }),
            answers: CredentialCache::new(),
        }
    }

    /// The source for a registry entry: `None` unless it sets `docker_config` and no
    /// username/password (which win).
    pub fn for_registry(config: &RegistryConfig) -> Option<Self> {
        let path = config.docker_config.as_ref()?;
        if config.credentials.is_some() {
            return None;
        }
        Some(Self::new(path.clone(), server_key(&config.host)))
    }

    /// What the file says now, re-read if it changed since the last call.
    fn current(&self) -> Result<Lookup, RegistryError> {
        let now = stamp(&self.path);
        let mut parsed = self.parsed.lock().expect("docker config lock");
        match now {
            Err(e) => {
                parsed.stamp = None;
                parsed.lookup = Err(format!("cannot read {}: {e}", self.path.display()));
            }
            Ok(s) if parsed.stamp != Some(s) => {
                parsed.stamp = Some(s);
                parsed.lookup = lookup(&self.path, &self.server);
                // A new file may name another helper or revoke the old answer.
                self.answers.clear();
                match &parsed.lookup {
                    Ok(l) => {
                        tracing::debug!(path = %self.path.display(), source = %l.describe(), "docker config read")
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), reason = %e, "docker config unusable")
                    }
                }
            }
            Ok(_) => {}
        }
        parsed
            .lookup
            .clone()
            .map_err(|e| RegistryError::NoCredentials(format!("docker config: {e}")))
    }

    async fn ask_helper(&self, name: &str) -> Result<Credential, RegistryError> {
        let server = &self.server;
        self.answers
            .get(name, || async move {
                let (credential, lifetime) =
                    run_helper(name, server).await.map_err(no_credentials)?;
                tracing::debug!(helper = name, lifetime = ?lifetime, "credential helper answered");
                // An answer already expired is used once, never reused.
                Ok((credential, lifetime.unwrap_or_default()))
            })
            .await
    }
}

fn no_credentials(reason: String) -> RegistryError {
    RegistryError::NoCredentials(format!("docker config: {reason}"))
}

#[async_trait]
impl CredentialSource for DockerConfigSource {
    async fn credential(&self) -> Result<Credential, RegistryError> {
        match self.current()? {
            Lookup::Static(c, _) => Ok(c),
            Lookup::Helper { name, .. } => self.ask_helper(&name).await,
        }
    }

    fn describe(&self) -> String {
        match &self.parsed.lock().expect("docker config lock").lookup {
            Ok(l) => l.describe(),
            Err(_) => "docker config".into(),
        }
    }

    fn refused(&self) {
        // Only a helper's answer is minted; what `auths` says stays until the file changes.
        let helper = match &self.parsed.lock().expect("docker config lock").lookup {
            Ok(Lookup::Helper { name, .. }) => name.clone(),
            _ => return,
        };
        self.answers.refused(helper.as_str());
    }
}

/// The helper's answer (docker-credential-helpers `credentials.Credentials`).
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The exact text helpers print for "no credentials for this server"
/// (docker-credential-helpers `credentials.errCredentialsNotFoundMessage`).
const NOT_FOUND: &str = "credentials not found in native keychain";

/// Runs `docker-credential-<name> get` under [`HELPER_TIMEOUT`]. The protocol, from
/// github.com/docker/docker-credential-helpers (client/client.go):
///
/// ```text
/// // Get executes an external program to get the credentials from a native store.
/// func Get(program ProgramFunc, serverURL string) (*credentials.Credentials, error) {
///     cmd := program("get")
///     cmd.Input(strings.NewReader(serverURL))
///     out, err := cmd.Output()
///     ...
///     if credentials.IsErrCredentialsNotFoundMessage(t) { ... }
///     resp := &credentials.Credentials{ServerURL: serverURL}
///     json.NewDecoder(bytes.NewReader(out)).Decode(resp)
/// ```
///
/// with `Credentials{ServerURL, Username, Secret}` as JSON, and Username `<token>` meaning the
/// Secret is an identity token. The helper's output is a secret and its stderr may echo one: neither
/// is ever logged or quoted; errors say only what happened. Returns the credential and how long to
/// reuse it (`None`: do not).
async fn run_helper(name: &str, server: &str) -> Result<(Credential, Option<Duration>), String> {
    let program = format!("docker-credential-{name}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, so that what it starts (a shell script's `sleep`, an agent)
        // can be killed with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program} (it must be on regwatch's PATH): {e}"))?;
    // Declared after `child`, so dropped before it: the group is killed while its leader is
    // not yet reaped, and its id cannot have been reused.
    let mut group = HelperGroup(child.id());
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(format!("{program}: no pipes to talk to it"));
    };
    let server_url = server.to_owned();
    let run = async {
        // A helper that exits without reading stdin closes the pipe: not an error by itself.
        let _ = stdin.write_all(server_url.as_bytes()).await;
        drop(stdin);
        // One byte past the cap tells an oversized answer, and memory stays bounded however
        // much the helper prints.
        let mut out = Vec::new();
        stdout
            .take(HELPER_OUTPUT_CAP as u64 + 1)
            .read_to_end(&mut out)
            .await?;
        if out.len() > HELPER_OUTPUT_CAP {
            return Ok(None);
        }
        Ok::<_, std::io::Error>(Some((child.wait().await?, out)))
    };
    // On timeout, past the cap or on an error, `group` kills the helper and all it started.
    let outcome = tokio::time::timeout(HELPER_TIMEOUT, run).await;
    if let Ok(Ok(Some(_))) = &outcome {
        // It exited and was reaped: what it left running on purpose is no longer ours to kill.
        group.0 = None;
    }
    let (status, stdout) = outcome
        .map_err(|_| format!("{program} timed out after {}s", HELPER_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{program} failed: {e}"))?
        .ok_or_else(|| format!("{program} printed more than a credential"))?;
    if !status.success() {
        if String::from_utf8_lossy(&stdout).trim() == NOT_FOUND {
            return Err(format!("{program} has no credentials for {server}"));
        }
        return Err(match status.code() {
            Some(code) => format!("{program} exited with status {code}"),
            None => format!("{program} was killed by a signal"),
        });
    }
    let answer: HelperAnswer = serde_json::from_slice(&stdout)
        .map_err(|_| format!("{program} printed no credentials JSON"))?;
    if answer.secret.is_empty() {
        return Err(format!("{program} has no credentials for {server}"));
    }
    let lifetime = secret_lifetime(&answer.secret);
    let credential = if answer.username == TOKEN_USERNAME {
        Credential::RefreshToken(answer.secret.into())
    } else {
        Credential::Basic(Credentials {
            username: answer.username,
            password: answer.secret.into(),
        })
    };
    Ok((credential, lifetime))
}

/// A running credential helper's process group (its id is the helper's pid); killed on drop.
struct HelperGroup(Option<u32>);

impl Drop for HelperGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.and_then(|id| libc::pid_t::try_from(id).ok()) {
            // SAFETY: kill(2) takes plain integers. The group's leader is our unreaped child, so
            // the id still names that group and no other.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// How long a helper's secret lives: until the `exp` of a JWT (`jwt_lifetime` believes at most
/// 24 h), else [`HELPER_DEFAULT_TTL`]; `None` if already expired. The cache renews it early.
fn secret_lifetime(secret: &str) -> Option<Duration> {
    let Some(remaining) = jwt_lifetime(secret) else {
        return Some(HELPER_DEFAULT_TTL);
    };
    Some(remaining).filter(|r| !r.is_zero())
}

/// Exposes a `Basic` credential's password to unit tests only.
#[cfg(test)]
fn password(c: &Credential) -> Option<&str> {
    match c {
        Credential::Basic(c) => Some(secrecy::ExposeSecret::expose_secret(&c.password)),
        Credential::RefreshToken(_) | Credential::Anonymous => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, server: &str) -> Result<Lookup, String> {
        resolve(serde_json::from_str(json).unwrap(), server)
    }

    #[test]
    fn hostnames_as_docker_converts_them() {
        assert_eq!(
            convert_to_hostname("https://reg.example:5000/v1/"),
            "reg.example:5000"
        );
        assert_eq!(convert_to_hostname("http://reg.example"), "reg.example");
        assert_eq!(convert_to_hostname("reg.example/v2/"), "reg.example");
        assert_eq!(convert_to_hostname("reg.example:443"), "reg.example:443");
        // As Go's url.Parse: a default port stays, user info goes, case folds.
        assert_eq!(
            convert_to_hostname("http://reg.example:80"),
            "reg.example:80"
        );
        assert_eq!(
            convert_to_hostname("https://reg.example:443/v2/"),
            "reg.example:443"
        );
        assert_eq!(convert_to_hostname("https://u@Reg.Example/"), "reg.example");
        assert_eq!(convert_to_hostname("https://[::1]:5000/v1/"), "[::1]:5000");
        assert!(!key_matches("http://reg.example:80", "reg.example"));
        assert!(key_matches("https://index.docker.io/v1/", HUB_KEY));
        assert!(key_matches("docker.io", HUB_KEY));
        assert!(!key_matches("reg.example", HUB_KEY));
        assert_eq!(server_key("registry-1.docker.io"), HUB_KEY);
        assert_eq!(server_key("docker.io"), HUB_KEY);
        assert_eq!(server_key("reg.example:5000"), "reg.example:5000");
    }

    #[test]
    fn precedence_is_docker_clis() {
        let json = r#"{"auths":{"r.io":{"auth":"dTpw"}},"credsStore":"desktop","credHelpers":{"r.io":"ecr-login"}}"#;
        assert_eq!(
            parse(json, "r.io").unwrap().describe(),
            "docker config: credHelper ecr-login"
        );
        assert_eq!(
            parse(json, "other.io").unwrap().describe(),
            "docker config: credsStore desktop"
        );
        let json = r#"{"auths":{"r.io":{"auth":"dTpw","identitytoken":"t"}}}"#;
        assert_eq!(
            parse(json, "r.io").unwrap().describe(),
            "docker config: identity token"
        );
        let json = r#"{"auths":{"r.io":{"auth":"dTpw","username":"x","password":"y"}}}"#;
        let Lookup::Static(c, _) = parse(json, "r.io").unwrap() else {
            panic!()
        };
        assert_eq!(password(&c), Some("p"), "auth overrides username/password");
        assert!(parse(r#"{"auths":{"r.io":{}}}"#, "r.io").is_err());
        assert!(parse(r#"{"credHelpers":{"r.io":"../x"}}"#, "r.io").is_err());
    }

    #[test]
    fn helper_secrets_live_until_shortly_before_exp() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jwt = |exp: u64| {
            format!(
                "e30.{}.sig",
                URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"))
            )
        };
        let l = secret_lifetime(&jwt(now + 100)).unwrap();
        assert!(
            l <= Duration::from_secs(100) && l >= Duration::from_secs(98),
            "{l:?}"
        );
        // The cache's one rule renews it a tenth of its life early.
        let renew = super::super::credential_cache::refresh_after(l);
        assert!(
            renew <= Duration::from_secs(90) && renew >= Duration::from_secs(88),
            "{renew:?}"
        );
        assert_eq!(secret_lifetime(&jwt(now - 5)), None);
        assert_eq!(secret_lifetime("opaque-secret"), Some(HELPER_DEFAULT_TTL));
    }
}
