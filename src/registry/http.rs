//! The HTTP transport every registry request goes through: the registry's rate limiter, timeouts,
//! retries of transient failures (honouring `Retry-After`), and size-capped body reads.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{RequestBuilder, Response, StatusCode, header};

use super::RegistryError;
use crate::config::RegistryConfig;

/// The largest response body read; listings past this are refused rather than buffered.
pub const BODY_CAP: usize = 32 * 1024 * 1024;
/// A `Retry-After` longer than this is not waited for inside one request; the scan fails instead and
/// the scheduler backs the registry off.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(30);

/// This process's share of every registry's `rate_limit`, in millionths: the whole of it on a
/// single node; in cluster mode, the fraction of the state partitions this replica owns.
static SHARE: AtomicU64 = AtomicU64::new(SHARE_WHOLE);
const SHARE_WHOLE: u64 = 1_000_000;

/// Sets this process's share of every registry's rate limit to `owned` / `total` (cluster mode
/// calls it on every rebalance). Limiters pick it up on their next request.
pub fn set_rate_share(owned: usize, total: usize) {
    let share = (owned as u64 * SHARE_WHOLE)
        .checked_div(total as u64)
        .unwrap_or(SHARE_WHOLE);
    SHARE.store(share, Ordering::Relaxed);
}

/// A registry's request rate limiter (`rate_limit` per second, times this process's share);
/// every request, token fetches included, waits on it first.
pub struct Limiter {
    /// The share the current quota was built for, and the limiter.
    inner: Mutex<(u64, Arc<DefaultDirectRateLimiter>)>,
    rate_limit: NonZeroU32,
    /// The registry's name, for metrics.
    name: String,
}

/// The quota for `share` millionths of `rate_limit`; never below one request per second, which
/// the replica's catalog listing needs even when it owns no partition.
fn quota(rate_limit: NonZeroU32, share: u64) -> Arc<DefaultDirectRateLimiter> {
    let scaled = (u64::from(rate_limit.get()) * share).div_ceil(SHARE_WHOLE);
    let rate =
        NonZeroU32::new(u32::try_from(scaled).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(Quota::per_second(rate)))
}

impl Limiter {
    /// The limiter for one registry entry.
    pub fn new(config: &RegistryConfig) -> Self {
        let share = SHARE.load(Ordering::Relaxed);
        Limiter {
            inner: Mutex::new((share, quota(config.rate_limit, share))),
            rate_limit: config.rate_limit,
            name: config.name.clone(),
        }
    }

    /// Waits for a slot, counting the time waited.
    pub async fn wait(&self) {
        let waited = std::time::Instant::now();
        let limiter = {
            let share = SHARE.load(Ordering::Relaxed);
            let mut inner = self.inner.lock().expect("limiter lock");
            if inner.0 != share {
                *inner = (share, quota(self.rate_limit, share));
            }
            inner.1.clone()
        };
        limiter.until_ready().await;
        crate::metrics::get()
            .limiter_wait
            .get_or_create(&crate::metrics::registry_label(&self.name))
            .inc_by(waited.elapsed().as_secs_f64());
    }

    /// The registry's name.
    pub fn registry(&self) -> &str {
        &self.name
    }
}

/// A rate-limited, retrying HTTP client for one registry.
pub struct Transport {
    client: reqwest::Client,
    /// The same client, but following no redirect: for requests whose body carries a secret
    /// (a 307/308 re-sends the body to wherever `Location` points; only headers are stripped).
    no_redirect: reqwest::Client,
    limiter: Limiter,
    /// Set when the registry's pull quota (Docker Hub's `ratelimit-remaining`) runs low.
    paused_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Transport {
    /// Builds the client and limiter for one registry entry.
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let build = |redirect| {
            reqwest::Client::builder()
                .user_agent(concat!("regwatch/", env!("CARGO_PKG_VERSION")))
                .timeout(config.request_timeout)
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(90))
                .redirect(redirect)
                .https_only(!config.insecure)
                .tls_danger_accept_invalid_certs(config.insecure)
                .build()
                .map_err(|e| RegistryError::Unreachable(format!("cannot build HTTP client: {e}")))
        };
        Ok(Transport {
            client: build(redirect_policy())?,
            no_redirect: build(reqwest::redirect::Policy::none())?,
            limiter: Limiter::new(config),
            paused_until: std::sync::Mutex::new(None),
        })
    }

    /// The underlying client, to build requests with.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A client that follows no redirect, for requests whose body is a secret.
    pub fn no_redirect_client(&self) -> &reqwest::Client {
        &self.no_redirect
    }

    /// Sends the request `build` makes, waiting for the limiter before every attempt and retrying
    /// connection failures, 5xx and 429. Any other status is returned to the caller.
    pub async fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        if let Some(until) = *self.paused_until.lock().expect("pause lock") {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                return Err(RegistryError::RateLimited {
                    retry_after: Some(left),
                });
            }
        }
        let metrics = crate::metrics::get();
        let attempt = || async {
            self.limiter.wait().await;
            let name = self.limiter.registry();
            let response = build().send().await.map_err(|e| {
                metrics.request(name, None);
                transport_error(e)
            })?;
            let status = response.status();
            metrics.request(name, Some(status.as_u16()));
            if let Some(pause) = quota_pause(&response) {
                tracing::warn!(
                    registry = name,
                    ?pause,
                    "pull quota nearly used up; pausing this registry"
                );
                *self.paused_until.lock().expect("pause lock") =
                    Some(std::time::Instant::now() + pause);
            }
            if let Some(remaining) = ratelimit_remaining(&response) {
                metrics
                    .ratelimit_remaining
                    .get_or_create(&crate::metrics::registry_label(name))
                    .set(remaining);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                return Err(RegistryError::RateLimited {
                    retry_after: retry_after(&response),
                });
            }
            if status.is_server_error() {
                return Err(RegistryError::Status {
                    status: status.as_u16(),
                    what: response.url().path().to_owned(),
                });
            }
            Ok(response)
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(3)
                    .with_jitter(),
            )
            .when(RegistryError::is_transient)
            .adjust(|e, backoff| match e {
                RegistryError::RateLimited {
                    retry_after: Some(wait),
                } if *wait > MAX_INLINE_RETRY_AFTER => None,
                RegistryError::RateLimited {
                    retry_after: Some(wait),
                } => Some(*wait),
                _ => backoff,
            })
            .notify(|e, wait| tracing::debug!(error = %e, ?wait, "retrying registry request"))
            .await
    }
}

/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 5;

/// Follows up to [`MAX_REDIRECTS`] redirects, but never from https to http. reqwest's rule for
/// dropping `Authorization` on a redirect looks at host and port only, so it does not promise that
/// a downgrade to plain http on the same host and port (possible with `insecure`) goes without
/// credentials; the Policy API cannot strip a header, so such a redirect is refused instead. No
/// registry needs one to list tags.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt
            .previous()
            .last()
            .is_some_and(|from| from.scheme() == "https" && attempt.url().scheme() == "http");
        if downgrade {
            attempt.error("refused a redirect from https to plain http")
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// Reads a body, refusing more than `cap` bytes.
pub async fn read_body(mut response: Response, cap: usize) -> Result<Vec<u8>, RegistryError> {
    if response
        .content_length()
        .is_some_and(|len| len > cap as u64)
    {
        return Err(RegistryError::Protocol(format!(
            "response body larger than {cap} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > cap {
            return Err(RegistryError::Protocol(format!(
                "response body larger than {cap} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks that a response claims to be JSON (or says nothing), as registries' listings do.
pub fn expect_json(response: &Response) -> Result<(), RegistryError> {
    match response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str())
    {
        None => Ok(()),
        Some(Ok(ct)) if ct.to_ascii_lowercase().contains("json") => Ok(()),
        Some(other) => Err(RegistryError::Protocol(format!(
            "expected a JSON response, got content-type {:?}",
            other.unwrap_or("<non-ASCII>")
        ))),
    }
}

/// Docker Hub's `ratelimit-remaining: 97;w=21600`: the count before the `;`.
fn ratelimit_remaining(response: &Response) -> Option<i64> {
    let value = response
        .headers()
        .get("ratelimit-remaining")?
        .to_str()
        .ok()?;
    value.split(';').next()?.trim().parse().ok()
}

/// How long to pause when the quota is down to its last 10 % (`ratelimit-limit: 100;w=21600`):
/// the rest is left to the deployers that pull. Watching itself pulls nothing.
/// The longest pause a registry's headers are believed for: Docker Hub's window is 6 h, and an
/// absurd value must not overflow `Instant` arithmetic.
const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

fn quota_pause(response: &Response) -> Option<Duration> {
    let remaining = ratelimit_remaining(response)?;
    let limit = response.headers().get("ratelimit-limit")?.to_str().ok()?;
    let mut parts = limit.split(';');
    let total: i64 = parts.next()?.trim().parse().ok()?;
    let window = parts
        .find_map(|p| p.trim().strip_prefix("w=")?.parse::<u64>().ok())
        .unwrap_or(21_600);
    (remaining <= (total / 10).max(1)).then(|| Duration::from_secs(window).min(MAX_PAUSE))
}

fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_PAUSE));
    }
    // An HTTP-date (RFC 9110 §10.2.3): IMF-fixdate, or the obsolete RFC 850 and asctime forms.
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(MAX_PAUSE),
    )
}

/// Maps a reqwest failure to an error that never includes the URL's query (which could carry tokens).
pub fn transport_error(e: reqwest::Error) -> RegistryError {
    let e = e.without_url();
    if e.is_timeout() {
        RegistryError::Unreachable("timed out".into())
    } else if e.is_connect() {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        RegistryError::Unreachable(reason)
    } else if e.is_redirect() {
        // A refused redirect is the registry's answer, not a transient failure: no retry.
        let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        RegistryError::Protocol(format!("redirect: {reason}"))
    } else if e.is_body() || e.is_decode() {
        RegistryError::Protocol(format!("reading response: {e}"))
    } else {
        RegistryError::Unreachable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_uses_its_share_of_the_rate_limit() {
        let rate = NonZeroU32::new(90).unwrap();
        let cells = |share| {
            let burst = quota(rate, share).check_n(NonZeroU32::new(90).unwrap());
            matches!(burst, Ok(Ok(())))
        };
        assert!(cells(SHARE_WHOLE), "a single node bursts its whole limit");
        assert!(
            !cells(SHARE_WHOLE / 3),
            "a third of the partitions, a third of the limit"
        );
        let third = quota(rate, SHARE_WHOLE / 3);
        assert!(matches!(
            third.check_n(NonZeroU32::new(30).unwrap()),
            Ok(Ok(()))
        ));
        // No partition owned: the catalog listing still gets one request per second.
        assert!(quota(rate, 0).check().is_ok());
    }

    fn response(remaining: &str, limit: &str) -> Response {
        let r = axum::http::Response::builder()
            .header("ratelimit-remaining", remaining)
            .header("ratelimit-limit", limit)
            .body("")
            .unwrap();
        Response::from(r)
    }

    #[test]
    fn docker_hub_quota_pauses_at_ten_percent() {
        assert_eq!(quota_pause(&response("50;w=21600", "100;w=21600")), None);
        assert_eq!(
            quota_pause(&response("10;w=21600", "100;w=21600")),
            Some(Duration::from_secs(21_600))
        );
        assert_eq!(
            quota_pause(&response("0", "100;w=3600")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            ratelimit_remaining(&response("97;w=21600", "100")),
            Some(97)
        );
    }

    #[test]
    fn absurd_pauses_are_believed_for_a_day_at_most() {
        // `Instant::now() + pause` must not overflow whatever a registry's headers say.
        let huge = u64::MAX.to_string();
        let pause = quota_pause(&response("0", &format!("100;w={huge}"))).unwrap();
        assert!(pause <= MAX_PAUSE, "{pause:?}");
        let wait = retry_after(&retry_response(&huge)).unwrap();
        assert!(wait <= MAX_PAUSE, "{wait:?}");
        let _ = std::time::Instant::now() + pause + wait;
    }

    fn retry_response(value: &str) -> Response {
        let r = axum::http::Response::builder()
            .header("retry-after", value)
            .body("")
            .unwrap();
        Response::from(r)
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(
            retry_after(&retry_response("120")),
            Some(Duration::from_secs(120))
        );
        let soon = std::time::SystemTime::now() + Duration::from_secs(3600);
        let wait = retry_after(&retry_response(&httpdate::fmt_http_date(soon))).unwrap();
        assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600));
        assert_eq!(
            retry_after(&retry_response("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(retry_after(&retry_response("soon")), None);
    }
}
