//! Stopping on SIGINT and SIGTERM: kubelet stops a pod's containers with SIGTERM, a
//! person with Ctrl-C, and every daemon must leave the same way on both.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, taken over from the moment it is made: a signal that comes
/// before [`Shutdown::recv`] is awaited is kept, not lost (and does not kill the
/// process half-way through its start).
#[derive(Debug)]
pub struct Shutdown {
    int: Signal,
    term: Signal,
}

impl Shutdown {
    /// Installs the handlers. Needs a tokio runtime.
    pub fn new() -> std::io::Result<Shutdown> {
        Ok(Shutdown {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_signal_sent_before_waiting_is_kept() {
        let mut shutdown = Shutdown::new().unwrap();
        use nix::sys::signal::{Signal, kill};
        kill(nix::unistd::Pid::this(), Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shutdown.recv())
            .await
            .expect("SIGTERM received");
    }
}
