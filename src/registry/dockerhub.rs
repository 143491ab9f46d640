//! Docker Hub: the Distribution API at registry-1.docker.io, whichever Hub host a user types, with
//! official images under `library/`. It has no catalog, so repositories are named, never globbed.

use url::Url;

/// Hosts users type for Docker Hub; all mean the Hub's registry API.
const HOSTS: &[&str] = &[
    "registry.hub.docker.com",
    "hub.docker.com",
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
];
/// Docker Hub's registry API endpoint.
const API: &str = "https://registry-1.docker.io";
/// Docker Hub's own API (hub.docker.com), default of `hub_api_url` for Docker Hub entries.
pub const HUB_API: &str = "https://hub.docker.com";
/// The host events name images by, as `docker pull` does: docker.io/library/nginx.
pub const EVENT_HOST: &str = "docker.io";

/// The registry API endpoint for `host` (`host[:port]` as configured) when it is one of the Hub's
/// hosts; `None` for any other host.
pub fn api_endpoint(host: &str) -> Option<Url> {
    HOSTS
        .contains(&host)
        .then(|| Url::parse(API).expect("static URL"))
}

/// The full repository path for a name as users write it: official images such as `nginx` live
/// under `library/`.
pub fn qualify(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("library/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_hosts_map_to_the_api_and_official_images_to_library() {
        assert_eq!(
            api_endpoint("hub.docker.com").unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        assert!(api_endpoint("registry.example.com").is_none());
        assert!(
            api_endpoint("docker.io:444").is_none(),
            "a port makes it another host"
        );
        assert_eq!(qualify("nginx"), "library/nginx");
        assert_eq!(qualify("bitnami/redis"), "bitnami/redis");
    }
}
