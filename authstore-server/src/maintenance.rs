//! Background upkeep of a running server: cleanup on an interval, and flushing the buffered
//! last-used times of personal access tokens and login sessions.

use std::time::Duration;

use authstore_core::Authstore;
use authstore_core::backend::CleanupOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// What the background tasks do and how often.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MaintenanceConfig {
    /// How often cleanup runs (the first pass runs at start); `None` turns it off (run
    /// `authstore cleanup` from a scheduler instead). Default 5 minutes.
    pub cleanup_interval: Option<Duration>,
    /// Retention, batch size and time budget of each pass.
    pub cleanup: CleanupOptions,
    /// How often buffered last-used times are written. Default 5 seconds.
    pub flush_interval: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            cleanup_interval: Some(Duration::from_secs(300)),
            cleanup: CleanupOptions::default(),
            flush_interval: Duration::from_secs(5),
        }
    }
}

/// The running tasks; [`shutdown`](Self::shutdown) stops them and writes what is buffered.
#[derive(Debug)]
pub struct Maintenance {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store: Authstore,
}

/// Starts the background tasks on the current tokio runtime.
pub fn spawn_maintenance(store: Authstore, config: MaintenanceConfig) -> Maintenance {
    let (stop, _) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(every) = config.cleanup_interval.filter(|d| !d.is_zero()) {
        let (s, mut rx) = (store.clone(), stop.subscribe());
        let options = config.cleanup;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => run_cleanup(&s, &options).await,
                    _ = rx.changed() => break,
                }
            }
        }));
    }
    let every = config.flush_interval.max(Duration::from_millis(100));
    let (s, mut rx) = (store.clone(), stop.subscribe());
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => flush(&s).await,
                _ = rx.changed() => break,
            }
        }
    }));
    Maintenance { stop, tasks, store }
}

impl Maintenance {
    /// Stops the tasks (a cleanup pass in progress finishes its batch first) and writes the
    /// buffered last-used times once more.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        flush(&self.store).await;
    }
}

async fn run_cleanup(store: &Authstore, options: &CleanupOptions) {
    match store.cleanup(options).await {
        Ok(report) => {
            crate::metrics::cleanup(Ok(&report));
            tracing::info!(
                deleted = report.total(),
                incomplete = report.incomplete,
                "cleanup pass"
            );
        }
        Err(e) => {
            crate::metrics::cleanup(Err(()));
            tracing::warn!(code = e.code(), error = %e, "cleanup pass failed; the next one retries");
        }
    }
}

async fn flush(store: &Authstore) {
    if let Err(e) = store.flush_pat_usage().await {
        tracing::warn!(code = e.code(), error = %e, "writing PAT last-used times failed");
    }
    if let Err(e) = store.flush_login_session_usage().await {
        tracing::warn!(code = e.code(), error = %e, "writing login-session last-seen times failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestServer;
    use authstore_core::{NewClient, Scopes};

    // Paused tokio time: the sleeps below advance virtual time while the task runs.
    #[tokio::test(start_paused = true)]
    async fn cleanup_runs_at_start_and_shutdown_returns() {
        let t = TestServer::new();
        let c = t
            .store
            .create_client(NewClient::confidential("svc").scopes(Scopes::parse("a").unwrap()))
            .await
            .unwrap();
        t.store
            .issue_client_credentials(c.client.id, None, &Default::default())
            .await
            .unwrap();
        // Two days later the token is past expiry and retention.
        t.clock.advance(Duration::from_secs(2 * 86_400));
        let m = spawn_maintenance(t.store.clone(), MaintenanceConfig::default());
        // The first tick fires at once; wait for it by polling the store.
        let mut gone = false;
        for _ in 0..200 {
            if t.store.stats().await.unwrap().access_tokens.expired == 0 {
                gone = true;
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        m.shutdown().await;
        assert!(gone, "the first cleanup pass deleted the expired token");
    }
}
