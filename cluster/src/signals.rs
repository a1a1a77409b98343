//! The signals that stop a local cluster's parent: SIGINT, SIGTERM and
//! SIGHUP. The children run in process groups of their own (a Ctrl-C in the
//! terminal reaches the parent alone), so the parent must hear these and stop
//! its children itself.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT, SIGTERM and SIGHUP, listened for from [`StopSignals::register`]
/// on: register before starting children, since a signal that arrived
/// before anyone listened would kill the parent and orphan them.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Must run inside a tokio runtime.
    pub fn register() -> anyhow::Result<StopSignals> {
        let listen = |kind| signal(kind).context("cannot listen for signals");
        Ok(StopSignals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// The name of the next stop signal.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}
