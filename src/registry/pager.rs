//! The rules every paged listing shares, whatever its API (`tags/list` and `_catalog`, ACR's
//! `_tags`, Harbor's artifacts, Docker Hub's tags): a bound on pages, no page read twice, next
//! pages only on the API's own origin (where its credentials go), and a refusal after the first
//! page read as the listing changing under the reader, never as the API refusing the repository.

use std::collections::HashSet;

use url::Url;

use super::RegistryError;

/// A listing needing more pages than this is refused as runaway.
pub const MAX_PAGES: usize = 10_000;

/// The pages one listing has read.
pub struct Pages {
    origin: Url,
    visited: HashSet<String>,
    what: String,
}

impl Pages {
    /// A listing of `what` (for errors) whose pages must stay on `origin`.
    pub fn new(origin: &Url, what: impl Into<String>) -> Self {
        Pages {
            origin: origin.clone(),
            visited: HashSet::new(),
            what: what.into(),
        }
    }

    /// Admits `url` as the next page to read; an error past [`MAX_PAGES`] or for a page read
    /// before (a loop). Returns the page's index, from 0.
    pub fn admit(&mut self, url: &Url) -> Result<usize, RegistryError> {
        let index = self.visited.len();
        if index >= MAX_PAGES {
            return Err(RegistryError::Protocol(format!(
                "{}: more than {MAX_PAGES} pages; refusing runaway pagination",
                self.what
            )));
        }
        if !self.visited.insert(url.as_str().to_owned()) {
            return Err(RegistryError::Protocol(format!(
                "{}: pagination loops back to a page already read",
                self.what
            )));
        }
        Ok(index)
    }

    /// `target` (a `Link` or `next` value) resolved against the page `current`, refused unless
    /// it stays on the origin.
    pub fn resolve(&self, current: &Url, target: &str) -> Result<Url, RegistryError> {
        let url = current.join(target).map_err(|e| {
            RegistryError::Protocol(format!("{}: next page is not a URL: {e}", self.what))
        })?;
        if !same_origin(&url, &self.origin) {
            return Err(RegistryError::Protocol(format!(
                "{}: next page points to another host",
                self.what
            )));
        }
        Ok(url)
    }

    /// What a failed page means. After the first page, the API listed the repository already:
    /// a 401/403/404 or other 4xx now (a page past an end that shrank, a token that lapsed
    /// mid-listing) fails this listing, to be tried again whole next cycle, and is never taken
    /// for "not found" or for the API refusing the repository for good.
    pub fn failed(&self, e: RegistryError) -> RegistryError {
        let refusal_like = matches!(
            e,
            RegistryError::Unauthorized { .. } | RegistryError::NotFound(_)
        ) || matches!(e, RegistryError::Status { status, .. } if (400..500).contains(&status));
        if self.visited.len() > 1 && refusal_like {
            RegistryError::Protocol(format!(
                "{}: page {} failed after earlier pages were served ({e}); listing again next cycle",
                self.what,
                self.visited.len()
            ))
        } else {
            e
        }
    }
}

/// Whether `url` is on `base`'s origin (scheme, host, port): the only place a listing's next page
/// may be fetched from, with the credentials it carries.
pub fn same_origin(url: &Url, base: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_stay_home_and_never_repeat() {
        let base = Url::parse("https://reg.example.com/").unwrap();
        let mut pages = Pages::new(&base, "team/app");
        let first = base.join("/v2/team/app/tags/list?n=2").unwrap();
        assert_eq!(pages.admit(&first).unwrap(), 0);
        let next = pages
            .resolve(&first, "/v2/team/app/tags/list?n=2&last=b")
            .unwrap();
        assert_eq!(pages.admit(&next).unwrap(), 1);
        assert!(pages.admit(&first).is_err(), "a loop");
        assert!(pages.resolve(&first, "https://evil.example.com/x").is_err());
        assert!(pages.resolve(&first, "http://reg.example.com/x").is_err());
    }

    #[test]
    fn a_refusal_after_the_first_page_is_the_listing_changing() {
        let base = Url::parse("https://reg.example.com/").unwrap();
        let mut pages = Pages::new(&base, "team/app");
        pages.admit(&base.join("/p1").unwrap()).unwrap();
        let first = pages.failed(RegistryError::NotFound("team/app".into()));
        assert!(matches!(first, RegistryError::NotFound(_)), "{first}");
        pages.admit(&base.join("/p2").unwrap()).unwrap();
        for e in [
            RegistryError::NotFound("team/app".into()),
            RegistryError::Unauthorized {
                status: 403,
                what: "registry",
            },
            RegistryError::Status {
                status: 405,
                what: "x".into(),
            },
        ] {
            assert!(matches!(pages.failed(e), RegistryError::Protocol(_)));
        }
        // A registry-wide failure keeps its meaning (429 backs the registry off).
        assert!(matches!(
            pages.failed(RegistryError::RateLimited { retry_after: None }),
            RegistryError::RateLimited { .. }
        ));
    }
}
