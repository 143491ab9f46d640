//! Scanning: the pure diff, one scan cycle, and the per-registry scheduler.

pub mod backoff;
pub mod diff;
pub mod scan;
pub mod scheduler;
pub mod versions;
