//! Graceful shutdown in one small piece (after mini-redis): a trigger the gateway pulls once, and
//! a signal every long-running task (bridge consumers, WebSockets) waits on alongside its work.

use std::sync::Arc;

use tokio::sync::watch;

/// Pulled once to stop everything.
#[derive(Debug, Clone)]
pub(crate) struct Trigger(Arc<watch::Sender<bool>>);

/// Resolves once the trigger has been pulled.
#[derive(Debug, Clone)]
pub(crate) struct Signal(watch::Receiver<bool>);

pub(crate) fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(Arc::new(tx)), Signal(rx))
}

impl Trigger {
    pub(crate) fn pull(&self) {
        self.0.send_replace(true);
    }
}

impl Signal {
    /// Waits for the trigger. If the trigger is dropped without being pulled (the `Gateway`
    /// handle was dropped), shutdown can never come and this waits forever: the tasks are
    /// detached, as with a dropped `JoinHandle`.
    pub(crate) async fn wait(&mut self) {
        if self.0.wait_for(|pulled| *pulled).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub(crate) fn is_pulled(&self) -> bool {
        *self.0.borrow()
    }
}
