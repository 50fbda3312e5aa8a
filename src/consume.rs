//! What the consume loops of `guardrail run` and of the two scale-out stages share: the
//! hand-over before a revoke, the drain at shutdown, and when to tick and commit besides
//! the timers ([`Cadence`]). Each loop keeps its own
//! `select!` (the engine follows the applied and policies topics, the judge ticks after
//! every batch); these are the parts whose order is the guarantee (SPEC §6).

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use tokio::sync::mpsc::Receiver;

use crate::kafka::Polled;

/// How often a stage closes windows that are due when no batch comes.
pub(crate) const TICK_INTERVAL: Duration = Duration::from_millis(50);
/// How often a stage commits its input offsets (with what it published).
pub(crate) const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// After a batch, the least time since the last tick for another.
const BATCH_TICK: Duration = Duration::from_millis(5);

/// A stage that consumes batches, closes windows on ticks and commits its input offsets
/// with what it published.
pub(crate) trait Consuming {
    /// Delivery is exactly-once: a failed commit aborted outputs, so the stage stops.
    fn exactly_once(&self) -> bool;
    async fn on_batch(&mut self, polled: &Polled) -> anyhow::Result<()>;
    async fn tick(&mut self) -> anyhow::Result<()>;
    /// Waits until what was published is acknowledged (or failed).
    async fn settle(&mut self) -> anyhow::Result<()>;
    /// At shutdown, after [`Consuming::settle`]: flush what the stage produced outside
    /// its tracked outputs.
    fn flush(&mut self) {}
    async fn commit(&mut self, mode: CommitMode) -> anyhow::Result<()>;
    /// After the drain, done or not: stop publishing and report not ready.
    async fn close(&mut self);
}

/// Partitions are about to be revoked: process what the poller queued, commit it while
/// the partitions are still ours, then let the rebalance go on. A failed commit under
/// exactly-once stops the stage (its transaction's outputs were discarded); under
/// at-least-once the next owner re-reads from the previous commit.
pub(crate) async fn hand_over(
    stage: &mut impl Consuming,
    rx: &mut Receiver<Polled>,
    done: std::sync::mpsc::SyncSender<()>,
) -> anyhow::Result<()> {
    while let Ok(polled) = rx.try_recv() {
        stage.on_batch(&polled).await?;
    }
    stage.tick().await?;
    stage.settle().await?;
    let committed = stage.commit(CommitMode::Sync).await;
    let _ = done.send(());
    match committed {
        Err(e) if stage.exactly_once() => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "commit before the revoke failed");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Stops consuming: batches still queued are neither processed nor committed.
pub(crate) async fn stop_poller(
    stop_polling: &AtomicBool,
    rx: Receiver<Polled>,
    poller: JoinHandle<()>,
) {
    stop_polling.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
}

/// The drain at shutdown, within `grace`: close what can close, settle, commit. Then
/// [`Consuming::close`], whether it finished or not.
pub(crate) async fn drain(stage: &mut impl Consuming, grace: Duration) -> anyhow::Result<()> {
    let drain = async {
        stage.tick().await?;
        stage.settle().await?;
        stage.flush();
        stage.commit(CommitMode::Sync).await?;
        anyhow::Ok(())
    };
    let drained = tokio::time::timeout(grace, drain).await;
    stage.close().await;
    match drained {
        Ok(r) => r?,
        Err(_) => anyhow::bail!(
            "the drain did not finish within the grace period ({grace:?}; is the broker \
             reachable?): nothing after the last commit was committed, the next owner \
             re-reads it"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

/// When a stage ticks and commits besides its interval timers. Under load the timers
/// wait behind batches (during catch-up the poller always has one ready), so after a
/// batch the stage ticks too, at most every [`BATCH_TICK`], which bounds decision
/// latency, and commits every [`COMMIT_INTERVAL`].
pub(crate) struct Cadence {
    last_tick: Instant,
    last_commit: Instant,
}

impl Cadence {
    pub(crate) fn new() -> Cadence {
        Cadence {
            last_tick: Instant::now(),
            last_commit: Instant::now(),
        }
    }

    pub(crate) async fn after_batch(&mut self, stage: &mut impl Consuming) -> anyhow::Result<()> {
        if self.last_tick.elapsed() >= BATCH_TICK {
            self.tick(stage).await?;
        }
        if self.last_commit.elapsed() >= COMMIT_INTERVAL {
            self.commit(stage).await?;
        }
        Ok(())
    }

    pub(crate) async fn tick(&mut self, stage: &mut impl Consuming) -> anyhow::Result<()> {
        stage.tick().await?;
        self.last_tick = Instant::now();
        Ok(())
    }

    pub(crate) async fn commit(&mut self, stage: &mut impl Consuming) -> anyhow::Result<()> {
        stage.commit(CommitMode::Async).await?;
        self.last_commit = Instant::now();
        Ok(())
    }
}
