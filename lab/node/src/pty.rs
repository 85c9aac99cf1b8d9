//! Pseudo-terminals for TTY sessions: the master side, read and written from async
//! code (exec) or from threads (container-init), and resized as the client's terminal
//! is; the slave side becomes a process's stdin, stdout and stderr.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// A new pseudo-terminal: (master, slave).
pub(crate) fn open() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    Ok((master, slave))
}

/// Sets the terminal size (the kernel sends SIGWINCH to the foreground process group).
pub(crate) fn resize(master: impl AsFd, width: u16, height: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Makes the terminal on `fd` the calling process's controlling terminal; the caller
/// must lead a session without one (after `setsid`).
pub(crate) fn make_controlling(fd: impl AsFd) -> io::Result<()> {
    rustix::process::ioctl_tiocsctty(fd)?;
    Ok(())
}

/// Whether `fd` is a terminal.
pub(crate) fn is_tty(fd: impl AsFd) -> bool {
    rustix::termios::isatty(fd)
}

/// The master side for async code: a reader, a writer and the descriptor to resize.
/// tokio's pipe ends do no more than non-blocking read(2) and write(2) on a
/// descriptor epoll can watch, which a terminal's master is; reading fails (EIO) once
/// no process holds the slave.
#[derive(Debug)]
pub(crate) struct Master {
    pub reader: tokio::net::unix::pipe::Receiver,
    pub writer: tokio::net::unix::pipe::Sender,
    pub control: OwnedFd,
}

impl Master {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Master> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Master {
            reader: tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd.try_clone()?)?,
            writer: tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd.try_clone()?)?,
            control: fd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_terminal_echoes_and_resizes() {
        let (master, slave) = open().unwrap();
        assert!(is_tty(&slave));
        let mut m = Master::new(master).unwrap();
        resize(&m.control, 100, 30).unwrap();
        let ws = rustix::termios::tcgetwinsize(&slave).unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
        // The line discipline echoes typed input back to the master.
        m.writer.write_all(b"hi\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = m.reader.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"hi"), "{:?}", &buf[..n]);
        drop(slave);
        // Without a slave holder, reading ends in EIO.
        loop {
            match m.reader.read(&mut buf).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::IO.raw_os_error()));
                    break;
                }
            }
        }
    }
}
