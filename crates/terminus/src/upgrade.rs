//! Zero-downtime binary upgrade: a new process takes over the listening sockets of the running
//! one, which then stops accepting, drains and exits 0.
//!
//! The running process (the old one), on `SIGUSR2`:
//! 1. listens on a Unix socket in the abstract namespace under an unguessable name and starts
//!    the binary at the path it was itself started from (so a binary replaced on disk is the
//!    one that runs), with its own arguments and `TERMINUS_UPGRADE_SOCKET` naming that socket;
//! 2. accepts the new process's connection only if the peer's pid (`SO_PEERCRED`) is the child
//!    it started (and the new process checks that the socket is its parent's);
//! 3. lets go of the store (changes answer 503 meanwhile; one process at a time opens the redb
//!    file), and waits until its last reader has closed it;
//! 4. sends the addresses of its listeners and admin listener, with the sockets themselves
//!    attached (`SCM_RIGHTS`), as HAProxy's `expose-fd listeners` does for `haproxy -x`;
//! 5. waits for the new process to say `ready` (its listeners, store, admin listener and ready
//!    file are in place): then stops accepting and drains ([`crate::Router::hand_over`]).
//!
//! If the new process exits, closes the connection, or is not ready within
//! [`READY_TIMEOUT`], it is killed, the old process opens the store again and keeps serving,
//! and says why in its log. The sockets are the same kernel objects in both processes, so no
//! connection is refused at any point: what the old process stops accepting, the new one
//! accepts from the same queue.
//!
//! Why a Unix socket rather than descriptors inherited through `exec` (nginx's way): the new
//! process receives each socket as an owned descriptor from `recvmsg`, so no code has to claim
//! a raw descriptor number it was told about in an environment variable (which Rust can only do
//! with `unsafe`, and which goes wrong silently if the number is stale), and the same channel
//! carries the readiness answer back.

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::startup::{Inherited, Router};

/// The environment variable that tells a new process where to take its sockets from.
pub const SOCKET_ENV: &str = "TERMINUS_UPGRADE_SOCKET";
/// How long the new process has, from its start, to be ready (it loads the whole store).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the old process waits for the store's last reader (an API read in flight).
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// More sockets than any config has listeners; bounds the receive buffer.
const MAX_SOCKETS: usize = 64;
/// The line the new process sends once it serves.
const READY_LINE: &[u8] = b"ready\n";

/// What the old process hands over; the sockets follow in this order, listeners then admin.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    pid: u32,
    listeners: Vec<SocketAddr>,
    admin: SocketAddr,
}

/// Why an upgrade did not happen (the old process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot open the hand-over socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot start {}: {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the new process exited before it was ready ({0}); its log lines say why")]
    Exited(std::process::ExitStatus),
    #[error("the new process was not ready within {}s", READY_TIMEOUT.as_secs())]
    Timeout,
    #[error("the new process closed the hand-over before it was ready; its log lines say why")]
    Closed,
    #[error("the store is still in use after {}s; not handing it over", STORE_RELEASE_TIMEOUT.as_secs())]
    StoreBusy,
    #[error("hand-over failed: {0}")]
    Io(#[source] std::io::Error),
}

/// Starts `exe` with `args`, hands it the router's sockets and store, and waits until it is
/// ready. `Ok(pid)` of the new process: the caller drains and exits. On an error the new
/// process is gone and the router has its store back.
pub async fn upgrade(router: &Router, exe: &Path, args: &[OsString]) -> Result<u32, UpgradeError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let name = socket_name();
    let listener = UnixAddr::from_abstract_name(name.as_bytes())
        .and_then(|addr| UnixListener::bind_addr(&addr))
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .map_err(UpgradeError::Socket)?;
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .env(SOCKET_ENV, &name)
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, binary = %exe.display(), "upgrade: new process started; handing over the listeners once it connects");
    let stream = tokio::select! {
        accepted = accept_child(&listener, pid) => accepted,
        status = child.wait() => match status {
            Ok(status) => Err(UpgradeError::Exited(status)),
            Err(e) => Err(UpgradeError::Io(e)),
        },
        () = tokio::time::sleep_until(deadline) => Err(UpgradeError::Timeout),
    };
    drop(listener);
    let result = match stream {
        Ok(stream) => hand_over(router, stream, deadline).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        if router.control.store_handed_over() {
            take_store_back(router).await;
        }
    }
    // On success the child is left running: it outlives this process.
    result.map(|()| pid)
}

/// A name nobody can guess in advance (the pid check is what keeps others out; this keeps
/// them from squatting the name first).
fn socket_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = std::collections::hash_map::RandomState::new();
    let salt = std::hash::BuildHasher::hash_one(&random, nanos);
    format!(
        "terminus-upgrade-{}-{nanos:x}-{salt:016x}",
        std::process::id()
    )
}

/// The first connection that comes from the child `pid` (anything else is dropped).
async fn accept_child(
    listener: &tokio::net::UnixListener,
    pid: u32,
) -> Result<tokio::net::UnixStream, UpgradeError> {
    loop {
        let (stream, _) = listener.accept().await.map_err(UpgradeError::Io)?;
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(cred)
                if u32::try_from(cred.pid.as_raw_nonzero().get()).ok() == Some(pid)
                    && cred.uid == rustix::process::getuid() =>
            {
                return Ok(stream)
            }
            Ok(cred) => tracing::warn!(
                peer_pid = cred.pid.as_raw_nonzero().get(),
                "upgrade: a connection to the hand-over socket from another process was refused"
            ),
            Err(e) => tracing::warn!(error = %e, "upgrade: cannot check the hand-over peer"),
        }
    }
}

/// Releases the store, sends the sockets, and waits for `ready`.
async fn hand_over(
    router: &Router,
    stream: tokio::net::UnixStream,
    deadline: Instant,
) -> Result<(), UpgradeError> {
    release_store(router).await?;
    let offer = Offer {
        pid: std::process::id(),
        listeners: router.handoff.listeners.iter().map(|(a, _)| *a).collect(),
        admin: router.handoff.admin.0,
    };
    let mut message = serde_json::to_vec(&offer).map_err(|e| UpgradeError::Io(e.into()))?;
    message.push(b'\n');
    let fds: Vec<OwnedFd> = router
        .handoff
        .listeners
        .iter()
        .map(|(_, fd)| fd)
        .chain(std::iter::once(&router.handoff.admin.1))
        .map(|fd| fd.try_clone())
        .collect::<Result<_, _>>()
        .map_err(UpgradeError::Io)?;
    let stream = stream.into_std().map_err(UpgradeError::Io)?;
    let wait = deadline.saturating_duration_since(Instant::now());
    tokio::task::spawn_blocking(move || send_and_wait(stream, &message, &fds, wait))
        .await
        .map_err(|e| UpgradeError::Io(std::io::Error::other(e)))?
}

fn send_and_wait(
    stream: UnixStream,
    message: &[u8],
    fds: &[OwnedFd],
    wait: Duration,
) -> Result<(), UpgradeError> {
    stream.set_nonblocking(false).map_err(UpgradeError::Io)?;
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if borrowed.len() > MAX_SOCKETS || !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(UpgradeError::Io(std::io::Error::other(
            "too many sockets to hand over",
        )));
    }
    // The sockets travel with the first bytes; the rest of the message follows as written.
    let sent = rustix::net::sendmsg(
        &stream,
        &[std::io::IoSlice::new(message)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| UpgradeError::Io(e.into()))?;
    (&stream)
        .write_all(&message[sent..])
        .map_err(UpgradeError::Io)?;
    stream
        .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .map_err(UpgradeError::Io)?;
    let mut answer = Vec::new();
    let read = std::io::BufReader::new((&stream).take(64)).read_until(b'\n', &mut answer);
    match read {
        Ok(_) if answer == READY_LINE => Ok(()),
        Ok(_) => Err(UpgradeError::Closed),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(UpgradeError::Timeout)
        }
        Err(e) => Err(UpgradeError::Io(e)),
    }
}

/// Lets go of the store and waits until the file is closed, so the new process can open it.
async fn release_store(router: &Router) -> Result<(), UpgradeError> {
    let control = router.control.clone();
    let store = tokio::task::spawn_blocking(move || control.release_store())
        .await
        .map_err(|e| UpgradeError::Io(std::io::Error::other(e)))?;
    let Some(mut store) = store else {
        return Ok(());
    };
    let deadline = Instant::now() + STORE_RELEASE_TIMEOUT;
    loop {
        // The last reader gone: dropping the store closes the file.
        match Arc::try_unwrap(store) {
            Ok(last) => {
                drop(last);
                tracing::info!("upgrade: store closed for the new process; changes answer 503 until it is ready");
                return Ok(());
            }
            Err(shared) if Instant::now() < deadline => {
                store = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(shared) => {
                router.control.reinstate_store(Some(shared));
                return Err(UpgradeError::StoreBusy);
            }
        }
    }
}

/// After an upgrade that did not happen: open the store again.
async fn take_store_back(router: &Router) {
    let Some(config) = router.store_config.clone() else {
        router.control.reinstate_store(None);
        return;
    };
    let opened = tokio::task::spawn_blocking(move || terminus_store::Store::open(&config)).await;
    match opened {
        Ok(Ok(store)) => {
            router.control.reinstate_store(Some(Arc::new(store)));
            tracing::info!("upgrade abandoned: the store is open again in this process");
        }
        Ok(Err(e)) => {
            router.control.reinstate_store(None);
            tracing::error!(error = %e, "upgrade abandoned, and the store cannot be opened again: serving what is loaded; changes answer 503 until a restart");
        }
        Err(e) => {
            router.control.reinstate_store(None);
            tracing::error!(error = %e, "upgrade abandoned, and reopening the store failed");
        }
    }
}

/// Why a new process could not take the sockets over.
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("{SOCKET_ENV}: cannot connect to the running terminus ({0}); it sets this variable itself when it starts its replacement, so unset it to start normally")]
    Connect(#[source] std::io::Error),
    #[error("{SOCKET_ENV}: the socket is held by pid {pid}, not by the process that started this one; unset it to start normally")]
    NotParent { pid: i32 },
    #[error("{SOCKET_ENV}: receiving the sockets failed: {0}")]
    Receive(#[source] std::io::Error),
    #[error("{SOCKET_ENV}: the hand-over message is malformed: {0}")]
    Offer(#[source] serde_json::Error),
    #[error("{SOCKET_ENV}: {expected} sockets were announced, {received} received")]
    Count { expected: usize, received: usize },
    #[error("{SOCKET_ENV}: the socket handed over for {address} is not a listening socket on that address")]
    NotListening { address: SocketAddr },
}

/// The new process's side: the sockets received, and the channel to say `ready` on.
#[derive(Debug)]
pub struct TakeOver {
    stream: UnixStream,
    /// The process being replaced.
    pub from_pid: u32,
}

/// If this process was started by an upgrade (`TERMINUS_UPGRADE_SOCKET` is set), connects to
/// the old process and receives its sockets. Blocking; call before serving.
pub fn take_over() -> Result<Option<(TakeOver, Inherited)>, TakeOverError> {
    let Some(name) = std::env::var_os(SOCKET_ENV) else {
        return Ok(None);
    };
    let stream = UnixAddr::from_abstract_name(name.as_encoded_bytes())
        .and_then(|addr| UnixStream::connect_addr(&addr))
        .map_err(TakeOverError::Connect)?;
    // Only the process that started this one hands it sockets.
    let peer = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| TakeOverError::Connect(e.into()))?;
    if Some(peer.pid) != rustix::process::getppid() {
        return Err(TakeOverError::NotParent {
            pid: peer.pid.as_raw_nonzero().get(),
        });
    }
    stream
        .set_read_timeout(Some(READY_TIMEOUT))
        .map_err(TakeOverError::Receive)?;
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 64 * 1024];
    let received = rustix::net::recvmsg(
        &stream,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| TakeOverError::Receive(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let mut message = buf[..received.bytes].to_vec();
    if !message.ends_with(b"\n") {
        let mut rest = Vec::new();
        std::io::BufReader::new(&stream)
            .read_until(b'\n', &mut rest)
            .map_err(TakeOverError::Receive)?;
        message.extend(rest);
    }
    let offer: Offer = serde_json::from_slice(&message).map_err(TakeOverError::Offer)?;
    let expected = offer.listeners.len() + 1;
    if fds.len() != expected {
        return Err(TakeOverError::Count {
            expected,
            received: fds.len(),
        });
    }
    let mut sockets = offer.listeners.iter().chain(std::iter::once(&offer.admin));
    let mut inherited = Inherited::default();
    let count = fds.len();
    for (i, fd) in fds.into_iter().enumerate() {
        let Some(&address) = sockets.next() else {
            break;
        };
        let listening = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
        let socket = std::net::TcpListener::from(fd);
        if !listening || socket.local_addr().ok() != Some(address) {
            return Err(TakeOverError::NotListening { address });
        }
        if i + 1 == count {
            inherited.admin = Some(socket);
        } else {
            inherited.listeners.push(socket);
        }
    }
    Ok(Some((
        TakeOver {
            stream,
            from_pid: offer.pid,
        },
        inherited,
    )))
}

impl TakeOver {
    /// Tells the old process that this one serves: it stops accepting and drains.
    pub fn ready(self) -> std::io::Result<()> {
        (&self.stream).write_all(READY_LINE)
    }
}

/// How `terminus upgrade` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Requested {
    /// The new process serves (it wrote the ready file); the old one drains and exits.
    Upgraded { old: u32, new: u32 },
    /// The old process abandoned the upgrade and serves on (it wrote the ready file again).
    Failed { pid: u32 },
}

/// Why `terminus upgrade` could not ask, or saw no outcome.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot read the ready file {path}: {source}; give the --ready-file the router was started with")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a terminus ready file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "cannot signal pid {pid} (from {path}): {source}; is the router running, as this user?"
    )]
    Signal {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no outcome within {}s: pid {pid} is still the one in the ready file; its log says what it is doing", .wait.as_secs())]
    NoOutcome { pid: u32, wait: Duration },
}

/// `terminus upgrade`: sends SIGUSR2 to the router that wrote `ready_file` and waits, up to
/// `wait`, for the file to be written again: by a new process (upgraded) or by the old one
/// (the upgrade failed). Each write replaces the file, so a new inode is the signal.
pub fn request(ready_file: &Path, wait: Duration) -> Result<Requested, RequestError> {
    use std::os::unix::fs::MetadataExt;
    let read = |path: &Path| -> Result<(u64, crate::startup::Ready), RequestError> {
        let fail = |source| RequestError::Read {
            path: path.to_path_buf(),
            source,
        };
        let inode = std::fs::metadata(path).map_err(fail)?.ino();
        let text = std::fs::read(path).map_err(fail)?;
        let ready = serde_json::from_slice(&text).map_err(|source| RequestError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Ok((inode, ready))
    };
    let (inode, before) = read(ready_file)?;
    let pid = before.pid;
    let signal_failed = |source: std::io::Error| RequestError::Signal {
        pid,
        path: ready_file.to_path_buf(),
        source,
    };
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| signal_failed(std::io::ErrorKind::InvalidData.into()))?;
    rustix::process::kill_process(target, rustix::process::Signal::USR2)
        .map_err(|e| signal_failed(e.into()))?;
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        // Polled: the file is replaced whole by rename, so each look sees an old or a new one.
        std::thread::sleep(Duration::from_millis(50));
        match read(ready_file) {
            Ok((now, ready)) if now != inode => {
                return Ok(if ready.pid == pid {
                    Requested::Failed { pid }
                } else {
                    Requested::Upgraded {
                        old: pid,
                        new: ready.pid,
                    }
                });
            }
            // Unchanged, or between a removal and a rename: look again.
            _ => {}
        }
    }
    Err(RequestError::NoOutcome { pid, wait })
}
