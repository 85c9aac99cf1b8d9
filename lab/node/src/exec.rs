//! What the streaming API runs on a [`Session`]:
//!
//! - [`exec`]: a command in a running container's namespaces, with its environment
//!   and working directory (`container-init enter`), on pipes or on a new
//!   pseudo-terminal; when the client goes away, its process group is killed;
//! - [`attach`]: the container's own process, through the socket its container-init
//!   keeps for that ([`crate::init`]): the live output, and its stdin and terminal
//!   size when the container has them (`stdin: true`, `tty: true`).

use std::io::{self, Read};
use std::os::unix::net::SocketAddr as UnixAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::pty;
use crate::stream::{Channel, Outcome, Session};

/// How long output is still read after the command exited (a background process may
/// hold its stdout open for ever; containerd waits, which can hang a session).
const DRAIN: Duration = Duration::from_secs(2);
/// The size of one output read.
const CHUNK: usize = 32 * 1024;

/// A running container, as `container-init enter` joins it.
#[derive(Debug, Clone)]
pub(crate) struct ContainerRef {
    /// container-init's spec (environment, working directory).
    pub spec: PathBuf,
    /// container-init's pid (in the container's namespaces).
    pub pid: u32,
}

/// Kills a process group when dropped, unless disarmed.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Sends what `from` yields as `channel` output until it ends.
async fn copy_out(
    mut from: impl AsyncRead + Unpin,
    channel: Channel,
    out: mpsc::Sender<(Channel, Bytes)>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out
                    .send((channel, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Runs `command` in the container `c` (this binary's `container-init enter`).
pub(crate) async fn exec(
    exe: PathBuf,
    c: ContainerRef,
    command: Vec<String>,
    s: Session,
) -> Outcome {
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg(crate::init::SUBCOMMAND)
        .arg("enter")
        .arg(&c.spec)
        .arg(c.pid.to_string())
        .arg("--")
        .args(&command)
        .kill_on_drop(true);
    let Session {
        opts,
        stdin,
        resize,
        out,
    } = s;
    let mut tasks = JoinSet::new();
    let mut output = JoinSet::new();
    let mut master = None;
    if opts.tty {
        let (m, slave) = match pty::open() {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(format!("allocating a terminal: {e}")),
        };
        let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map(Stdio::from);
        match (dup(&slave), dup(&slave)) {
            (Ok(a), Ok(b)) => {
                cmd.stdin(a).stdout(b).stderr(Stdio::from(slave));
            }
            (Err(e), _) | (_, Err(e)) => return Outcome::Failed(format!("a terminal: {e}")),
        }
        match pty::Master::new(m) {
            Ok(m) => master = Some(m),
            Err(e) => return Outcome::Failed(format!("a terminal: {e}")),
        }
    } else {
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(opts.stdin))
            .stdout(pipe(opts.stdout))
            .stderr(pipe(opts.stderr));
    }
    let spawned = cmd.spawn();
    // The terminal's slave must not stay open here, or reading the master never ends.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(format!(
                "error executing command in container: starting {}: {e}",
                exe.display()
            ));
        }
    };
    // container-init enter starts a session: its pid leads the command's group.
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    if let Some(pty::Master {
        reader,
        mut writer,
        control,
    }) = master
    {
        if let Some(mut stdin) = stdin {
            tasks.spawn(async move {
                while let Some(b) = stdin.recv().await {
                    if writer.write_all(&b).await.is_err() {
                        return;
                    }
                }
            });
        }
        if let Some(mut resize) = resize {
            tasks.spawn(async move {
                while let Some(size) = resize.recv().await {
                    let _ = pty::resize(&control, size.width, size.height);
                }
            });
        }
        // A terminal has one output; reading it fails once the command and what it
        // started have all exited.
        output.spawn(copy_out(reader, Channel::Stdout, out.clone()));
    } else {
        if let (Some(mut pipe), Some(mut stdin)) = (child.stdin.take(), stdin) {
            tasks.spawn(async move {
                while let Some(b) = stdin.recv().await {
                    if pipe.write_all(&b).await.is_err() {
                        return;
                    }
                }
                // Dropping the pipe is the command's end of input.
            });
        }
        if let Some(p) = child.stdout.take() {
            output.spawn(copy_out(p, Channel::Stdout, out.clone()));
        }
        if let Some(p) = child.stderr.take() {
            output.spawn(copy_out(p, Channel::Stderr, out.clone()));
        }
    }
    drop(out);
    let status = child.wait().await;
    // Whatever the command leaves running keeps running, as with a container runtime.
    guard.0 = None;
    let _ =
        tokio::time::timeout(DRAIN, async { while output.join_next().await.is_some() {} }).await;
    output.abort_all();
    tasks.abort_all();
    match status {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(0), _) => Outcome::Success,
            (Some(code), _) => Outcome::Exit { code, command },
            (None, Some(sig)) => Outcome::Exit {
                code: 128 + sig,
                command,
            },
            _ => Outcome::Failed("error executing command in container: no exit status".into()),
        },
        Err(e) => Outcome::Failed(format!("error executing command in container: {e}")),
    }
}

/// The attach socket's frames: one kind byte, the payload's length (32 bits,
/// big-endian), the payload.
pub(crate) mod frame {
    /// To the container: input for its stdin.
    pub(crate) const STDIN: u8 = 0;
    /// To the container: the client closed stdin.
    pub(crate) const STDIN_CLOSE: u8 = 1;
    /// To the container: the terminal's size (width, height: 16 bits each).
    pub(crate) const RESIZE: u8 = 2;
    /// From the container: its stdout (or its terminal's output).
    pub(crate) const STDOUT: u8 = 3;
    /// From the container: its stderr.
    pub(crate) const STDERR: u8 = 4;
    /// The most one frame carries.
    pub(crate) const MAX: usize = 1 << 20;
}

/// The abstract socket a container's container-init (process `pid`) serves attaches on.
/// Abstract names belong to a network namespace: container-init binds it before it
/// enters the pod's, so it is the node's.
pub fn attach_address(pid: u32) -> io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt;
    UnixAddr::from_abstract_name(format!("kubewire-attach-{pid}"))
}

/// One frame.
pub(crate) fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + payload.len());
    b.put_u8(kind);
    b.put_u32(u32::try_from(payload.len()).unwrap_or(0));
    b.extend_from_slice(payload);
    b
}

/// Reads one frame; `None` at the end of the connection.
pub(crate) fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))
        .unwrap_or(usize::MAX);
    if len > frame::MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// Attaches the session to the container whose container-init is `pid`; ends when
/// the container's process does (or the client leaves).
pub(crate) async fn attach(pid: u32, s: Session) -> Outcome {
    let stream = match attach_address(pid).and_then(|a| {
        let s = std::os::unix::net::UnixStream::connect_addr(&a)?;
        s.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(s)
    }) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("attaching to the container: {e}")),
    };
    let (mut rd, mut wr) = stream.into_split();
    let Session {
        stdin,
        resize,
        out,
        opts,
    } = s;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let mut tasks = JoinSet::new();
    if let Some(mut stdin) = stdin {
        let tx = tx.clone();
        tasks.spawn(async move {
            while let Some(b) = stdin.recv().await {
                for chunk in b.chunks(frame::MAX) {
                    if tx.send(encode(frame::STDIN, chunk)).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(encode(frame::STDIN_CLOSE, &[])).await;
        });
    }
    if let Some(mut resize) = resize {
        let tx = tx.clone();
        tasks.spawn(async move {
            while let Some(size) = resize.recv().await {
                let mut p = Vec::with_capacity(4);
                p.put_u16(size.width);
                p.put_u16(size.height);
                if tx.send(encode(frame::RESIZE, &p)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    tasks.spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while buf.len() >= 5 {
            let len = usize::try_from(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))
                .unwrap_or(usize::MAX);
            if len > frame::MAX {
                return Outcome::Failed("attaching to the container: bad frame".into());
            }
            if buf.len() < 5 + len {
                buf.reserve(5 + len - buf.len());
                break;
            }
            let kind = buf[0];
            buf.advance(5);
            let payload = buf.split_to(len).freeze();
            let channel = match kind {
                frame::STDOUT if opts.stdout => Channel::Stdout,
                frame::STDERR if opts.stderr => Channel::Stderr,
                // A TTY has one output stream.
                frame::STDERR if opts.tty && opts.stdout => Channel::Stdout,
                _ => continue,
            };
            if out.send((channel, payload)).await.is_err() {
                return Outcome::Success;
            }
        }
    }
    tasks.abort_all();
    Outcome::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut b = encode(frame::STDIN, b"abc");
        b.extend(encode(frame::STDIN_CLOSE, &[]));
        let mut r = &b[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((frame::STDIN, b"abc".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((frame::STDIN_CLOSE, vec![]))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }
}
