//! Webhook bodies: any bytes give repository names that are valid, or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use regwatch::registry::valid_repository;
use regwatch::webhook::pushed_repositories;

fuzz_target!(|data: &[u8]| {
    if let Ok(repos) = pushed_repositories(data) {
        assert!(repos.iter().all(|r| valid_repository(r)));
    }
});
