//! The `WWW-Authenticate` parser must never panic, and a Bearer result always has a realm.
#![no_main]
use libfuzzer_sys::fuzz_target;
use regwatch::registry::auth::{Challenge, parse_challenge};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(Challenge::Bearer { realm, .. }) = parse_challenge(s)
    {
        assert!(!realm.is_empty());
    }
});
