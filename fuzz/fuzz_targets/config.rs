//! Config loading: any text gives a config or an error with a sane line number, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = regwatch::config::parse(text)
        && let Some(line) = e.line
    {
        assert!(line >= 1 && line <= text.lines().count() + 1);
    }
});
