//! Talking to kubelet: serve a resource's socket, then `Register`; notice kubelet
//! restarts and do both again.
//!
//! kubelet restarts by wiping its socket directory (our socket with it) and creating a new
//! `kubelet.sock`. An inotify watch on the directory wakes every resource task; the task
//! then decides from the files themselves (our socket still ours? `kubelet.sock` still the
//! one we registered with?), so a missed or stale event cannot mislead it, and a slow
//! periodic check covers a watch that could not be set up.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};
use railvf_proto::v1beta1::RegisterRequest;
use railvf_proto::v1beta1::device_plugin_server::DevicePluginServer;
use railvf_proto::v1beta1::registration_client::RegistrationClient;
use railvf_proto::{KUBELET_SOCKET, VERSION, connect_unix};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::metrics::Metrics;
use crate::service::{PluginService, ResourceCtx, options};
use crate::status::StatusBoard;

/// How long one `Register` call may take. kubelet dials the plugin back inside it and
/// gives up on that dial after its own 10 s: waiting longer lets kubelet's answer (which
/// says why) arrive instead of our timeout hiding it.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Fallback check of the socket files when no inotify event arrives.
const RECHECK: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The retry interval's cap. Reaching it (about 6 s of failures: 0.1 + 0.2 + … + 3.2 s)
/// is when `/healthz` stops calling the registration "being retried" and reports it failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("kubelet is not running yet: {} does not exist", .0.display())]
    NotRunning(PathBuf),
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: railvf_proto::ConnectError,
    },
    #[error("kubelet refused the registration: {0}")]
    Rejected(#[from] tonic::Status),
    #[error("kubelet did not answer Register within {0:?}")]
    Timeout(Duration),
}

/// Identity of a file: a re-created file differs even when the inode number is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId(u64, u64, i64, i64);

fn file_id(p: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| FileId(m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Calls `Register` on `<dir>/kubelet.sock`.
pub async fn register(dir: &Path, req: RegisterRequest) -> Result<(), RegisterError> {
    let sock = dir.join(KUBELET_SOCKET);
    if !sock.exists() {
        return Err(RegisterError::NotRunning(sock));
    }
    let call = async {
        let ch = connect_unix(&sock)
            .await
            .map_err(|source| RegisterError::Connect {
                path: sock.clone(),
                source,
            })?;
        RegistrationClient::new(ch).register(req).await?;
        Ok(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .map_err(|_| RegisterError::Timeout(REGISTER_TIMEOUT))?
}

/// Watches `dir` with inotify and bumps the counter on every create/delete/move in it.
/// Survives the directory itself being removed and re-created.
pub async fn watch_dir(dir: PathBuf, tx: watch::Sender<u64>, mut stop: watch::Receiver<bool>) {
    let bump = |tx: &watch::Sender<u64>| tx.send_modify(|g| *g = g.wrapping_add(1));
    // Warned once per streak of failed watches, not at every retry.
    let mut failing = false;
    loop {
        let stream = Inotify::init().and_then(|ino| {
            ino.watches().add(
                &dir,
                WatchMask::CREATE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF,
            )?;
            ino.into_event_stream([0u8; 4096])
        });
        match stream {
            Ok(mut events) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(dir = %dir.display(), "watching the kubelet socket directory again");
                }
                tracing::debug!(dir = %dir.display(), "watching the kubelet socket directory");
                // The directory may have changed before the watch existed.
                bump(&tx);
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Ok(ev)) => {
                                bump(&tx);
                                if ev.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
                                    tracing::warn!(dir = %dir.display(), "the kubelet socket directory went away; waiting for it to come back");
                                    break;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!("inotify on {}: {e}", dir.display());
                                break;
                            }
                            None => break,
                        },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    "cannot watch {} with inotify ({e}); checking the sockets every {RECHECK:?} meanwhile, and retrying the watch",
                    dir.display()
                );
            }
            Err(e) => tracing::debug!("cannot watch {} with inotify ({e})", dir.display()),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Serves one resource on `<dir>/<socket>` and keeps it registered with kubelet until
/// `shutdown`; then stops serving and removes the socket.
pub struct ResourceTask {
    pub dir: PathBuf,
    pub socket: String,
    pub ctx: Arc<ResourceCtx>,
    pub events: watch::Receiver<u64>,
    pub shutdown: watch::Receiver<bool>,
    /// Counts successful registrations (the daemon logs when every resource has one).
    pub registered: Option<watch::Sender<u64>>,
    pub status: Arc<StatusBoard>,
    pub metrics: Arc<Metrics>,
}

enum Outcome {
    Restart(&'static str),
    Shutdown,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl ResourceTask {
    fn request(&self) -> RegisterRequest {
        RegisterRequest {
            version: VERSION.into(),
            endpoint: self.socket.clone(),
            resource_name: self.ctx.full_name.clone(),
            options: Some(options()),
        }
    }

    pub async fn run(mut self) {
        let sock = self.dir.join(&self.socket);
        let mut backoff = BACKOFF_MIN;
        let name = self.ctx.full_name.clone();
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            // Another process serving this socket (a DaemonSet surge, `serve` started by
            // hand) keeps it: unlinking it would make the two take it from each other in a
            // loop, each re-registering at once.
            let listener = if served_elsewhere(&sock).await {
                Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process accepts connections on it (a second railvf-device-plugin on this node?); not taking it over",
                ))
            } else {
                bind(&sock)
            };
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(resource = %name, "cannot serve on {}: {e}; retrying in {backoff:?}", sock.display());
                    self.status.update(&name, |s| {
                        s.serving = false;
                        s.registered = false;
                        s.serve_error = Some(format!("cannot serve on {}: {e}", sock.display()));
                    });
                    self.metrics.set_registered(&name, false);
                    if self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let ours = file_id(&sock);
            let (stop_tx, stop_rx) = watch::channel(false);
            let (ended_tx, ended_rx) = watch::channel(false);
            let svc = PluginService::new(self.ctx.clone(), stop_rx.clone());
            let server = tokio::spawn(async move {
                serve(listener, svc, stop_rx).await;
                let _ = ended_tx.send(true);
            });
            self.status.update(&name, |s| {
                s.serving = true;
                s.serve_error = None;
            });
            let outcome = self.register_and_watch(&sock, ours, ended_rx).await;
            self.status.update(&name, |s| {
                s.serving = false;
                s.registered = false;
            });
            self.metrics.set_registered(&name, false);
            let _ = stop_tx.send(true);
            if tokio::time::timeout(Duration::from_secs(2), server)
                .await
                .is_err()
            {
                tracing::debug!(resource = %self.ctx.full_name, "server did not stop in time; dropped");
            }
            match outcome {
                Outcome::Shutdown => {
                    if file_id(&sock) == ours {
                        let _ = std::fs::remove_file(&sock);
                    }
                    return;
                }
                Outcome::Restart(why) => {
                    tracing::info!(resource = %self.ctx.full_name, "{why}: serving again and re-registering");
                    backoff = BACKOFF_MIN;
                }
            }
        }
    }

    /// Sleeps `d` or until a directory event; true when shutting down.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.events.changed() => false,
            _ = self.shutdown.wait_for(|s| *s) => true,
        }
    }

    async fn register_and_watch(
        &mut self,
        sock: &Path,
        ours: Option<FileId>,
        mut server_ended: watch::Receiver<bool>,
    ) -> Outcome {
        let kubelet_sock = self.dir.join(KUBELET_SOCKET);
        let name = self.ctx.full_name.clone();
        let mut backoff = BACKOFF_MIN;
        let mut last_error = String::new();
        let mut attempts = 0u32;
        let first_try = Instant::now();
        // Register, retrying until kubelet takes it.
        let registered_with = loop {
            self.events.borrow_and_update();
            if file_id(sock) != ours {
                return Outcome::Restart("our socket was removed");
            }
            if *server_ended.borrow() {
                return Outcome::Restart("the gRPC server stopped");
            }
            let kubelet = file_id(&kubelet_sock);
            attempts += 1;
            let t = Instant::now();
            let (dir, req) = (self.dir.clone(), self.request());
            // A kubelet that takes the connection but never answers holds the call for
            // REGISTER_TIMEOUT: stopping must not wait for it, or the caller gives up on
            // this task before it removes its socket.
            let result = tokio::select! {
                r = register(&dir, req) => r,
                _ = self.shutdown.wait_for(|s| *s) => return Outcome::Shutdown,
            };
            match result {
                Ok(()) => {
                    tracing::info!(
                        resource = %name,
                        endpoint = %sock.display(),
                        attempts,
                        duration_ms = ms(t.elapsed()),
                        since_first_attempt_ms = ms(first_try.elapsed()),
                        "registered with kubelet"
                    );
                    self.status.update(&name, |s| {
                        s.registered = true;
                        s.failing_since = None;
                        s.attempts = 0;
                        s.last_error = None;
                        s.backoff_exhausted = false;
                    });
                    self.metrics.set_registered(&name, true);
                    if let Some(tx) = &self.registered {
                        tx.send_modify(|n| *n += 1);
                    }
                    break kubelet;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error || attempts.is_multiple_of(20) {
                        tracing::warn!(resource = %name, attempts, duration_ms = ms(t.elapsed()), "cannot register: {msg}; retrying (backoff up to {BACKOFF_MAX:?}, sooner when {} changes)", self.dir.display());
                    } else {
                        tracing::debug!(resource = %name, attempts, duration_ms = ms(t.elapsed()), "cannot register: {msg}");
                    }
                    self.metrics.registration_failed(&name);
                    let exhausted = backoff >= BACKOFF_MAX;
                    self.status.update(&name, |s| {
                        s.registered = false;
                        s.failing_since.get_or_insert(first_try);
                        s.attempts = attempts;
                        s.last_error = Some(msg.clone());
                        s.backoff_exhausted = exhausted;
                    });
                    last_error = msg;
                    if self.pause(backoff).await {
                        return Outcome::Shutdown;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        // Registered: wait for kubelet to go away or come back as a new process.
        loop {
            tokio::select! {
                _ = self.events.changed() => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = server_ended.wait_for(|e| *e) => {
                    return Outcome::Restart("the gRPC server stopped");
                }
                _ = self.shutdown.wait_for(|s| *s) => return Outcome::Shutdown,
            }
            if file_id(sock) != ours {
                return Outcome::Restart("our socket was removed (kubelet restarted)");
            }
            let now = file_id(&kubelet_sock);
            if now.is_some() && now != registered_with {
                return Outcome::Restart("kubelet.sock was re-created (kubelet restarted)");
            }
        }
    }
}

/// Whether a process accepts connections on `sock`. A socket left by a process that died
/// refuses them.
async fn served_elsewhere(sock: &Path) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::UnixStream::connect(sock)
        )
        .await,
        Ok(Ok(_))
    )
}

fn bind(sock: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(sock)
}

async fn serve(listener: UnixListener, svc: PluginService, mut stop: watch::Receiver<bool>) {
    let r = Server::builder()
        .add_service(DevicePluginServer::new(svc))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("device plugin server ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubelet that crashed leaves its socket file behind: the operator must read
    /// "refused" (a stale socket), not tonic's bare "transport error".
    #[tokio::test]
    async fn a_stale_kubelet_socket_is_reported_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        drop(std::os::unix::net::UnixListener::bind(dir.path().join(KUBELET_SOCKET)).unwrap());
        let req = RegisterRequest {
            version: VERSION.into(),
            endpoint: "railvf-x.sock".into(),
            resource_name: "nvidia.com/x".into(),
            options: Some(options()),
        };
        let err = register(dir.path(), req).await.unwrap_err();
        assert!(matches!(err, RegisterError::Connect { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("Connection refused"), "{msg}");
        assert!(msg.contains("kubelet.sock"), "{msg}");
    }
}
