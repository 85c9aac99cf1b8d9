//! TCP connections the server opens itself (to kubelets, to admission webhooks), from
//! its own network namespace or from another (the lab's underlay, a node's).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Connects to `addr` within `timeout`, from the network namespace at `netns` (`None`:
/// this process's own). A socket keeps the namespace it was made in, so a short-lived
/// thread enters the namespace to connect.
pub(crate) async fn tcp(
    netns: Option<&Path>,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns.map(Path::to_path_buf) else {
        return tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
    };
    let std = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
        let file = std::fs::File::open(&netns)?;
        // The blocking pool reuses threads: do the work on a fresh one that dies
        // with the namespace it entered.
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .join()
        .map_err(|_| std::io::Error::other("dial thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    tokio::net::TcpStream::from_std(std)
}
