//! SIGINT and SIGTERM as a future, so servers take a `shutdown` future (as in
//! mini-redis) and tests can pass any other.

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Calls `reload` on every SIGHUP for as long as the process runs, logging
/// what it says (`what` names what is reloaded: "the TLS certificate").
/// A failed reload is logged as an error and leaves what was in force.
/// Must run inside a tokio runtime.
pub fn on_sighup(
    what: &'static str,
    reload: impl Fn() -> Result<String, String> + Send + Sync + 'static,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::error!(%error, what, "cannot watch SIGHUP: no reloads");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reload() {
                Ok(done) => tracing::info!(what, "SIGHUP: {done}"),
                Err(error) => {
                    tracing::error!(what, %error, "SIGHUP: not reloaded, the previous one stays")
                }
            }
        }
    });
}
