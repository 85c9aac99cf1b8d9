//! The speaker: one session per peer of the [`Plan`](super::plan::Plan), started,
//! restarted and stopped as the plan changes, each handed the routes it should carry
//! (and sending only their differences, [`super::session`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

use super::codec::Notification;
use super::plan::{Plan, Routes, Session};
use super::session::{self, Status};

struct Handle {
    session: Session,
    routes: watch::Sender<Arc<Routes>>,
    stop: oneshot::Sender<Notification>,
    task: JoinHandle<()>,
}

/// The sessions of this node.
pub struct Speaker {
    peers: BTreeMap<String, Handle>,
    status: mpsc::UnboundedSender<Status>,
    bfd: watch::Receiver<session::BfdStates>,
}

impl Speaker {
    /// A speaker with no peers, and the stream of its sessions' changes; `bfd` carries
    /// the peers' BFD states.
    pub fn new(
        bfd: watch::Receiver<session::BfdStates>,
    ) -> (Speaker, mpsc::UnboundedReceiver<Status>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Speaker {
                peers: BTreeMap::new(),
                status: tx,
                bfd,
            },
            rx,
        )
    }

    /// Brings the sessions to `plan`: peers gone are withdrawn from and closed (Cease,
    /// peer de-configured), peers whose settings changed are reopened, new peers
    /// dialled; every session is handed its routes (a no-op when they are the same).
    pub fn apply(&mut self, plan: &Plan) {
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(name, h)| plan.peers.get(*name).is_none_or(|p| p.session != h.session))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(h) = self.peers.remove(&name) {
                info!(peer = %name, "BGP peer removed or changed; closing its session");
                let _ = h.stop.send(Notification::new(6, 3, Vec::new()));
                // The task finishes on its own (withdraw, NOTIFICATION, close).
                drop(h.task);
            }
        }
        for (name, peer) in &plan.peers {
            match self.peers.get(name) {
                Some(h) => {
                    h.routes.send_if_modified(|r| {
                        if **r == peer.routes {
                            false
                        } else {
                            *r = Arc::new(peer.routes.clone());
                            true
                        }
                    });
                }
                None => {
                    let (routes, rx) = watch::channel(Arc::new(peer.routes.clone()));
                    let (stop, stop_rx) = oneshot::channel();
                    let task = tokio::spawn(session::run(
                        name.clone(),
                        peer.session.clone(),
                        rx,
                        stop_rx,
                        self.status.clone(),
                        self.bfd.clone(),
                    ));
                    self.peers.insert(
                        name.clone(),
                        Handle {
                            session: peer.session.clone(),
                            routes,
                            stop,
                            task,
                        },
                    );
                }
            }
        }
    }

    /// Stops every session gracefully: withdraws the routes, sends Cease
    /// (administrative shutdown) and closes, waiting at most `grace` for all.
    pub async fn shutdown(self, grace: Duration) {
        let mut tasks = Vec::new();
        for (_, h) in self.peers {
            let _ = h.stop.send(Notification::admin_shutdown());
            tasks.push(h.task);
        }
        let _ = tokio::time::timeout(grace, futures::future::join_all(tasks)).await;
    }
}
