//! Real components for the integration tests: Debian's `docker-registry` and the Tansu broker, each
//! started on a free loopback port; a client that pushes images through the Distribution API; a
//! Kafka consumer; and helpers to run the `regwatch` binary.
#![allow(dead_code)] // each test binary uses its own subset

pub mod aws_endpoints;
pub mod azure;
pub mod cluster;
pub mod kafka_wire;
pub mod moto;
pub mod native;
pub mod proxy;
pub mod synthetic;
pub mod tls;
pub mod token_server;
pub mod verdict;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of a required tool, or a loud failure that says how to install it. Besides PATH, it
/// looks where scripts/setup.sh installs: ~/.cargo/bin (Tansu) and target/venv/bin (moto).
pub fn require(binary: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    });
    let home_cargo =
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin").join(binary));
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/venv/bin")
        .join(binary);
    found
        .or(home_cargo.filter(|p| p.is_file()))
        .or(Some(venv).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("`{binary}` is required by this test but was not found on PATH, in ~/.cargo/bin or in target/venv/bin; install it with: {install} (scripts/setup.sh installs every tool the suite needs)"))
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during startup: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

/// How a test registry authenticates.
#[derive(Clone)]
pub enum Auth {
    /// No auth.
    None,
    /// htpasswd Basic auth with this user and password.
    Htpasswd(String, String),
    /// Token auth: JWTs from `realm`, signed by the key of the certificate at `cert`.
    Token {
        /// The token endpoint.
        realm: String,
        /// The signer's certificate (`rootcertbundle`).
        cert: PathBuf,
    },
}

/// A running `docker-registry serve`.
pub struct Registry {
    child: Child,
    /// With token auth: a second, unauthenticated process on the same storage, to push through.
    pusher: Option<(Child, String)>,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Credentials to push with, if any.
    pub auth: Auth,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry with its own storage.
    pub fn start(auth: Auth) -> Registry {
        Self::start_with(auth, "")
    }

    /// Starts a registry with extra top-level YAML (e.g. a `notifications:` block).
    pub fn start_with(auth: Auth, extra_yaml: &str) -> Registry {
        let bin = require("docker-registry", "apt-get install docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Token { realm, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token_server::SERVICE,
                token_server::ISSUER,
                cert.display()
            ),
            Auth::Htpasswd(user, pass) => {
                let hash = bcrypt::hash(pass, 4).unwrap();
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: regwatch-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}{extra_yaml}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        wait_for_port(port, &mut child, "docker-registry");
        let pusher = matches!(auth, Auth::Token { .. }).then(|| {
            let push_port = free_port();
            let push_config = dir.path().join("push.yml");
            let text = std::fs::read_to_string(&config_path).unwrap();
            let text = text[..text.find("auth:").unwrap()]
                .replace(&format!(":{port}"), &format!(":{push_port}"));
            std::fs::write(&push_config, text).unwrap();
            let mut pusher = Command::new(require(
                "docker-registry",
                "apt-get install docker-registry",
            ))
            .arg("serve")
            .arg(&push_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the pushing docker-registry");
            wait_for_port(push_port, &mut pusher, "docker-registry (pusher)");
            (pusher, format!("http://127.0.0.1:{push_port}"))
        });
        Registry {
            child,
            pusher,
            host: format!("127.0.0.1:{port}"),
            auth,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// Where pushes go: the registry itself, or its unauthenticated sibling under token auth.
    fn push_base(&self) -> String {
        self.pusher
            .as_ref()
            .map_or_else(|| self.url(), |(_, url)| url.clone())
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let req = client.request(method, format!("{}{path}", self.push_base()));
        match &self.auth {
            Auth::Htpasswd(u, p) => req.basic_auth(u, Some(p)),
            Auth::None | Auth::Token { .. } => req,
        }
    }

    async fn upload_blob(&self, client: &reqwest::Client, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let start = self
            .request(
                client,
                reqwest::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 202, "start blob upload to {repo}");
        let location = start.headers()["location"].to_str().unwrap();
        let mut url = reqwest::Url::parse(&self.push_base())
            .unwrap()
            .join(location)
            .unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        let path = format!("{}?{}", url.path(), url.query().unwrap());
        let resp = self
            .request(client, reqwest::Method::PUT, &path)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            201,
            "blob upload to {repo}: {}",
            resp.text().await.unwrap_or_default()
        );
        digest
    }

    /// Pushes a small, unique image as `repo:tag` and returns the manifest digest the registry reports.
    pub async fn push(&self, repo: &str, tag: &str) -> String {
        let client = reqwest::Client::new();
        let nonce = format!(
            "{repo}:{tag}:{:?}:{}",
            Instant::now(),
            rand::random::<u64>()
        );
        let layer = nonce.as_bytes();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"comment":"{nonce}"}}"#
        );
        let layer_digest = self.upload_blob(&client, repo, layer).await;
        let config_digest = self.upload_blob(&client, repo, config.as_bytes()).await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{layer_digest}"}}]}}"#,
            config.len(),
            layer.len()
        );
        let resp = self
            .request(
                &client,
                reqwest::Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
            )
            .header(
                "content-type",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "manifest put {repo}:{tag}");
        let digest = resp.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            digest,
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(manifest.as_bytes()))
            )
        );
        digest
    }
}

impl Registry {
    /// Puts `body` as manifest `repo:reference` with its media type; returns the digest the
    /// registry reports, checked against the body's SHA-256.
    async fn put_manifest(
        &self,
        client: &reqwest::Client,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &str,
    ) -> String {
        let resp = self
            .request(
                client,
                reqwest::Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header("content-type", media_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .map(|d| d.to_str().unwrap().to_owned());
        assert_eq!(
            status,
            201,
            "manifest put {repo}:{reference}: {}",
            resp.text().await.unwrap_or_default()
        );
        let digest = digest.expect("Docker-Content-Digest");
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(Sha256::digest(body.as_bytes())))
        );
        digest
    }

    /// Pushes a multi-platform image as `repo:tag` and returns its digest: an OCI image index
    /// (`oci`) or a Docker manifest list, over one small, unique image per platform
    /// (`os/arch[/variant]`), each with its config blob naming that platform. `unknown/unknown` is
    /// an attestation manifest, the way `docker buildx` adds one.
    pub async fn push_index(&self, repo: &str, tag: &str, platforms: &[&str], oci: bool) -> String {
        // OCI image-spec (image-index.md, manifest.md, config.md) and Docker's manifest v2
        // schema 2 (manifest list, image manifest, container image config) media types.
        let (index_type, manifest_type, config_type, layer_type) = if oci {
            (
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        };
        let client = reqwest::Client::new();
        let mut entries = Vec::new();
        for platform in platforms {
            let mut parts = platform.split('/');
            let (os, arch) = (parts.next().unwrap(), parts.next().unwrap());
            let variant = parts
                .next()
                .map_or(String::new(), |v| format!(r#","variant":"{v}""#));
            let nonce = format!("{repo}:{tag}:{platform}:{}", rand::random::<u64>());
            let layer_digest = self.upload_blob(&client, repo, nonce.as_bytes()).await;
            let config = format!(
                r#"{{"architecture":"{arch}","os":"{os}"{variant},"rootfs":{{"type":"layers","diff_ids":[]}},"comment":"{nonce}"}}"#
            );
            let config_digest = self.upload_blob(&client, repo, config.as_bytes()).await;
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{manifest_type}","config":{{"mediaType":"{config_type}","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"{layer_type}","size":{},"digest":"{layer_digest}"}}]}}"#,
                config.len(),
                nonce.len()
            );
            // Pushed by digest, as buildx pushes an index's children.
            let reference = format!(
                "sha256:{}",
                hex::encode(Sha256::digest(manifest.as_bytes()))
            );
            let digest = self
                .put_manifest(&client, repo, &reference, manifest_type, &manifest)
                .await;
            let annotations = if *platform == "unknown/unknown" {
                r#","annotations":{"vnd.docker.reference.type":"attestation-manifest"}"#.to_owned()
            } else {
                String::new()
            };
            entries.push(format!(
                r#"{{"mediaType":"{manifest_type}","size":{},"digest":"{digest}","platform":{{"architecture":"{arch}","os":"{os}"{variant}}}{annotations}}}"#,
                manifest.len()
            ));
        }
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{index_type}","manifests":[{}]}}"#,
            entries.join(",")
        );
        self.put_manifest(&client, repo, tag, index_type, &index)
            .await
    }

    /// Tags the manifest `repo@digest` as `repo:tag` too (as `docker buildx imagetools create`
    /// or `crane tag` do: the same bytes under another name, so the same digest).
    pub async fn retag(&self, repo: &str, digest: &str, tag: &str) {
        let client = reqwest::Client::new();
        let resp = self
            .request(
                &client,
                reqwest::Method::GET,
                &format!("/v2/{repo}/manifests/{digest}"),
            )
            .header(
                "accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "get {repo}@{digest}");
        let media_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let body = resp.text().await.unwrap();
        let again = self
            .put_manifest(&client, repo, tag, &media_type, &body)
            .await;
        assert_eq!(again, digest);
    }
}

impl Registry {
    /// Pushes an image manifest as `repo:tag` whose config blob is `config`, of media type
    /// `config_type`; returns its digest. The registry stores a config blob as opaque bytes.
    pub async fn push_with_config(
        &self,
        repo: &str,
        tag: &str,
        config_type: &str,
        config: &[u8],
    ) -> String {
        let client = reqwest::Client::new();
        let config_digest = self.upload_blob(&client, repo, config).await;
        let manifest_type = "application/vnd.oci.image.manifest.v1+json";
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{manifest_type}","config":{{"mediaType":"{config_type}","size":{},"digest":"{config_digest}"}},"layers":[]}}"#,
            config.len()
        );
        self.put_manifest(&client, repo, tag, manifest_type, &manifest)
            .await
    }

    /// Puts `body` as manifest `repo:tag` of `media_type` as is; returns its digest.
    pub async fn put_raw_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        body: &str,
    ) -> String {
        self.put_manifest(&reqwest::Client::new(), repo, tag, media_type, body)
            .await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((pusher, _)) = &mut self.pusher {
            let _ = pusher.kill();
            let _ = pusher.wait();
        }
    }
}

/// A running Tansu broker with in-memory storage.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub brokers: String,
    port: u16,
}

impl Tansu {
    /// Starts a broker on a free port.
    pub fn start() -> Tansu {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (to restart one where clients expect it).
    pub fn start_on(port: u16) -> Tansu {
        let bin = require(
            "tansu",
            "cargo install tansu --locked --version 0.6.0 --features dynostore",
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_for_port(port, &mut child, "tansu");
        Tansu {
            child,
            brokers: format!("127.0.0.1:{port}"),
            port,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id (to pause it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One consumed Kafka record.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub payload: serde_json::Value,
    pub content_type: Option<String>,
}

/// Reads `topic` from the beginning until `want` records arrived, or `quiet` passed with nothing
/// new after at least `want` (use `want` = 0 to collect whatever arrives within `quiet`).
pub fn consume(
    brokers: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
    quiet: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // A topic's metadata can lag its creation (a broker just restarted, a topic just re-created),
    // so an answer without partitions is asked again until `timeout`.
    let asked = Instant::now();
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let partitions = metadata.topics()[0].partitions().len();
        if partitions > 0 || asked.elapsed() >= timeout {
            break partitions;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if partitions == 0 {
        // Nothing to read: the caller's assertions on what it expected say why, with its log.
        eprintln!("consume: topic {topic} has no partitions after {timeout:?}");
        return Vec::new();
    }
    assign_from_beginning(&consumer, topic, partitions);
    let started = Instant::now();
    let mut last_new = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < timeout {
        if want > 0 && out.len() >= want && last_new.elapsed() >= quiet {
            break;
        }
        if want == 0 && last_new.elapsed() >= quiet {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let content_type = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "content-type")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                out.push(Record {
                    key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                    payload: serde_json::from_slice(m.payload().unwrap()).unwrap(),
                    content_type,
                });
                last_new = Instant::now();
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// Assigns `consumer` all `partitions` of `topic` from their first offset; fails if there are none.
pub fn assign_from_beginning(consumer: &BaseConsumer, topic: &str, partitions: usize) {
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
}

/// A scratch directory with a config file for `regwatch`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// `127.0.0.1:PORT` of the admin endpoint.
    pub admin: String,
}

impl Setup {
    /// Writes `body` (the `[[registry]]` and `[kafka]` parts) after a `[daemon]` section whose
    /// `state_dir` is inside the scratch directory.
    pub fn new(daemon_extra: &str, body: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("regwatch.toml");
        let admin = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{}\"\nadmin_listen = \"{admin}\"\n{daemon_extra}\n{body}",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        Setup { dir, config, admin }
    }

    /// Runs `regwatch ARGS -c CONFIG` to completion: (exit code, stdout, stderr).
    pub fn regwatch(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_regwatch"))
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .env("RUST_LOG", "regwatch=debug")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `regwatch run` in the background; its output is collected as it comes.
    pub fn spawn(&self) -> Daemon {
        self.spawn_logging("regwatch=debug")
    }

    /// [`Setup::spawn`] with `RUST_LOG` = `filter` (`info` logs what a user sees by default,
    /// librdkafka's lines included).
    pub fn spawn_logging(&self, filter: &str) -> Daemon {
        Daemon::start(
            Command::new(env!("CARGO_BIN_EXE_regwatch"))
                .args(["run", "-c"])
                .arg(&self.config)
                .env("RUST_LOG", filter),
        )
    }
}

/// A running `regwatch run`, with its stdout lines and stderr collected by reader threads (so a
/// chatty daemon never blocks on a full pipe).
pub struct Daemon {
    pub child: Child,
    /// Stdout lines so far.
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Stderr so far.
    pub stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Spawns `command` with piped output.
    pub fn start(command: &mut Command) -> Daemon {
        use std::io::BufRead;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (o, e) = (stdout.clone(), stderr.clone());
        let readers = vec![
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    o.lock().unwrap().push(line);
                }
            }),
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    let mut e = e.lock().unwrap();
                    e.push_str(&line);
                    e.push('\n');
                }
            }),
        ];
        Daemon {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits: (exit code, stdout, stderr).
    pub fn stop(self) -> (i32, String, String) {
        self.signal(15)
    }

    /// Sends SIGKILL and waits: (exit code, stdout, stderr).
    pub fn kill9(self) -> (i32, String, String) {
        self.signal(9)
    }

    fn signal(mut self, sig: i32) -> (i32, String, String) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc_kill(self.child.id() as i32, sig);
        }
        let status = self.child.wait().unwrap();
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let out = self.stdout.lock().unwrap().join("\n");
        let err = self.stderr.lock().unwrap().clone();
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `user:pass` as a Basic header value would carry it.
pub fn basic_b64(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// Parses stdout JSON lines.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Fails unless every event validates against `schema/event.schema.json`.
pub fn assert_schema_valid(events: &[serde_json::Value]) {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schema/event.schema.json")).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles");
    assert!(!events.is_empty(), "no events to validate");
    let mut broken = events[0].clone();
    broken["id"] = serde_json::Value::from("not-a-sha256");
    assert!(
        !validator.is_valid(&broken),
        "the validator must reject a malformed id"
    );
    for e in events {
        let errors: Vec<String> = validator
            .iter_errors(e)
            .map(|err| err.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "event does not match the schema: {errors:?}\n{e}"
        );
    }
}

/// Appends a row to the fault-suite report that `scripts/test.sh` prints after the tests:
/// what was measured, the figure, what it must be, and whether it is (see [`verdict`]; a row
/// that misses is flagged there, and here in the test's output).
pub fn report(measure: &str, value: impl std::fmt::Display, expected: &str) {
    let value = value.to_string();
    let verdict = verdict::verdict(&value, expected);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-report");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.tsv", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    use std::io::Write;
    writeln!(f, "{measure}\t{value}\t{expected}\t{}", verdict.label()).unwrap();
    println!(
        "REPORT {measure}: {value} (expected {expected}){}",
        if verdict == verdict::Verdict::Missed {
            " MISSED"
        } else {
            ""
        }
    );
}

/// The value of the first metric line of `/metrics` on `admin` that starts with `name`.
pub async fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = metrics_text(admin).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// The text of `/metrics` on `admin`, or `None` when it does not answer.
pub async fn metrics_text(admin: &str) -> Option<String> {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Waits until `/readyz` on `admin` answers 200, failing the test after 30 s.
pub async fn wait_ready(admin: &str) {
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the daemon on `admin` has had `count` events acknowledged by the broker (a topic
/// regwatch re-creates exists only then), or `limit` passes.
pub async fn wait_published(admin: &str, count: usize, limit: Duration) {
    let started = Instant::now();
    while metric(admin, "regwatch_events_published_total")
        .await
        .unwrap_or(0.0)
        < count as f64
        && started.elapsed() < limit
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Registry {
    /// Pushes a cosign-style artifact for `subject` (`sha256:<hex>`) as `repo:sha256-<hex>.<kind>`
    /// (`kind` = `sig`, `att` or `sbom`) and returns its manifest digest. As cosign's storage
    /// specification lays them out: an OCI image manifest whose one layer is the signed payload
    /// (`application/vnd.dev.cosign.simplesigning.v1+json` with the
    /// `dev.cosignproject.cosign/signature` annotation for `.sig`, a DSSE envelope for `.att`, an
    /// SPDX document for `.sbom`). The signature bytes are not real: regwatch never verifies them.
    pub async fn push_cosign(&self, repo: &str, subject: &str, kind: &str) -> String {
        let client = reqwest::Client::new();
        let hex = subject.strip_prefix("sha256:").expect("a sha256 digest");
        let tag = format!("sha256-{hex}.{kind}");
        let nonce = rand::random::<u64>();
        let (layer_type, layer, annotations) = match kind {
            "sig" => (
                "application/vnd.dev.cosign.simplesigning.v1+json",
                format!(
                    r#"{{"critical":{{"identity":{{"docker-reference":"{}/{repo}"}},"image":{{"docker-manifest-digest":"{subject}"}},"type":"cosign container image signature"}},"optional":{{"nonce":"{nonce}"}}}}"#,
                    self.host
                ),
                format!(
                    r#"{{"dev.cosignproject.cosign/signature":"{}"}}"#,
                    base64::engine::general_purpose::STANDARD.encode(nonce.to_be_bytes())
                ),
            ),
            "att" => (
                "application/vnd.dsse.envelope.v1+json",
                format!(
                    r#"{{"payloadType":"application/vnd.in-toto+json","payload":"{}","signatures":[{{"sig":"{nonce}"}}]}}"#,
                    base64::engine::general_purpose::STANDARD.encode(format!(
                        r#"{{"_type":"https://in-toto.io/Statement/v0.1","subject":[{{"digest":{{"sha256":"{hex}"}}}}]}}"#
                    ))
                ),
                r#"{"predicateType":"https://slsa.dev/provenance/v0.2"}"#.to_owned(),
            ),
            "sbom" => (
                "text/spdx+json",
                format!(r#"{{"spdxVersion":"SPDX-2.3","name":"{nonce}"}}"#),
                "{}".to_owned(),
            ),
            other => panic!("no cosign artifact kind {other}"),
        };
        let config =
            r#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer_digest = self.upload_blob(&client, repo, layer.as_bytes()).await;
        let config_digest = self.upload_blob(&client, repo, config.as_bytes()).await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"{layer_type}","size":{},"digest":"{layer_digest}","annotations":{annotations}}}]}}"#,
            config.len(),
            layer.len()
        );
        let manifest_type = "application/vnd.oci.image.manifest.v1+json";
        self.put_manifest(&client, repo, &tag, manifest_type, &manifest)
            .await
    }
}

impl Daemon {
    /// The events printed on stdout so far (the stdout sink prints one JSON event per line).
    pub fn events(&self) -> Vec<serde_json::Value> {
        json_lines(&self.stdout.lock().unwrap().join("\n"))
    }

    /// Waits until an event on stdout satisfies `pred` and returns it, failing the test with
    /// `what` and the daemon's stderr after `within`.
    pub async fn wait_event(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let started = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                started.elapsed() < within,
                "no {what} within {within:?}; events: {:?}\nstderr:\n{}",
                self.events(),
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends SIGHUP and waits for the daemon to log its `nth` successful reload (10 s at most).
pub async fn reload(daemon: &Daemon, nth: usize) {
    Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    while daemon
        .stderr
        .lock()
        .unwrap()
        .matches("configuration reloaded")
        .count()
        < nth
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload logged: {}",
            daemon.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
