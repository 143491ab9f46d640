//! The embedded default sink: one event JSON per line on stdout.

use std::io::Write;

use async_trait::async_trait;

use super::Sink;
use crate::event::Event;

/// Writes each event's JSON on its own line to stdout.
pub struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    async fn prepare(&mut self) -> Result<(), String> {
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Event]) -> Vec<usize> {
        let mut out = std::io::stdout().lock();
        let mut acked = Vec::with_capacity(batch.len());
        for (i, event) in batch.iter().enumerate() {
            if writeln!(out, "{}", event.payload).is_err() {
                break;
            }
            acked.push(i);
        }
        // Only what reached the pipe counts as delivered.
        if out.flush().is_err() {
            acked.clear();
        }
        acked
    }
}
