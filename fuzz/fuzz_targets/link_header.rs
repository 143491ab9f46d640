//! The `Link` parser must never panic, and what it returns is a substring of its input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use regwatch::registry::oci::parse_next_link;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(target) = parse_next_link(s)
    {
        assert!(s.contains(target));
    }
});
