//! `tags/list` and `_catalog` bodies: any bytes give a list or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use regwatch::registry::oci::{repositories_of, tags_of};

fuzz_target!(|data: &[u8]| {
    let _ = tags_of(data, &mut Vec::new());
    let _ = repositories_of(data, &mut Vec::new());
});
