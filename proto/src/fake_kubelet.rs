//! A fake kubelet for tests and benchmarks: a real tonic `Registration` server on
//! `<dir>/kubelet.sock` that, like kubelet's device manager, dials the plugin's socket and
//! calls `GetDevicePluginOptions` inside `Register`, then hands the test a connected
//! `DevicePlugin` client. It can also "restart" the way kubelet does: stop, wipe the socket
//! directory, and serve a fresh `kubelet.sock`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::v1beta1::device_plugin_client::DevicePluginClient;
use crate::v1beta1::registration_server::{Registration, RegistrationServer};
use crate::v1beta1::{DevicePluginOptions, Empty, RegisterRequest};
use crate::{KUBELET_SOCKET, VERSION, connect_unix};

/// One successful `Register` call.
#[derive(Debug)]
pub struct Registered {
    pub request: RegisterRequest,
    /// What the plugin answered to `GetDevicePluginOptions` during registration.
    pub options: DevicePluginOptions,
    /// When the fake kubelet accepted the registration.
    pub at: Instant,
    /// A client connected to the plugin's endpoint, as kubelet keeps one.
    pub client: DevicePluginClient<Channel>,
}

struct RegistrationService {
    dir: PathBuf,
    tx: mpsc::UnboundedSender<Registered>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let request = req.into_inner();
        // kubelet's own checks (devicemanager/plugin/v1beta1/server.go).
        if request.version != VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported API version {:?}",
                request.version
            )));
        }
        if request.endpoint.is_empty() || request.endpoint.contains('/') {
            return Err(Status::invalid_argument(format!(
                "endpoint {:?} must be a file name in the device-plugins directory",
                request.endpoint
            )));
        }
        if !request.resource_name.contains('/') {
            return Err(Status::invalid_argument(format!(
                "resource name {:?} is not an extended resource name",
                request.resource_name
            )));
        }
        let channel = connect_unix(self.dir.join(&request.endpoint))
            .await
            .map_err(|e| {
                Status::failed_precondition(format!("cannot dial {}: {e}", request.endpoint))
            })?;
        let mut client = DevicePluginClient::new(channel);
        let options = client
            .get_device_plugin_options(Empty {})
            .await
            .map_err(|e| Status::failed_precondition(format!("GetDevicePluginOptions: {e}")))?
            .into_inner();
        let _ = self.tx.send(Registered {
            request,
            options,
            at: Instant::now(),
            client,
        });
        Ok(Response::new(Empty {}))
    }
}

/// The fake kubelet. Dropping it stops the server.
pub struct FakeKubelet {
    dir: PathBuf,
    rx: mpsc::UnboundedReceiver<Registered>,
    tx: mpsc::UnboundedSender<Registered>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl FakeKubelet {
    /// Serves `<dir>/kubelet.sock` (creating `dir` if needed).
    pub async fn start(dir: impl AsRef<Path>) -> io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut k = Self {
            dir: dir.as_ref().to_path_buf(),
            rx,
            tx,
            server: None,
        };
        k.serve()?;
        Ok(k)
    }

    /// A fake kubelet that is not serving yet (kubelet not started).
    pub fn not_started(dir: impl AsRef<Path>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            dir: dir.as_ref().to_path_buf(),
            rx,
            tx,
            server: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(KUBELET_SOCKET)
    }

    /// Starts serving (no-op when already serving).
    pub fn serve(&mut self) -> io::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let sock = self.socket();
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        let svc = RegistrationService {
            dir: self.dir.clone(),
            tx: self.tx.clone(),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(RegistrationServer::new(svc))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        self.server = Some((stop_tx, task));
        Ok(())
    }

    /// Stops serving and removes `kubelet.sock` (kubelet exiting).
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// What kubelet does when it restarts: stop, delete every file in the socket
    /// directory (plugin sockets included), then serve a new `kubelet.sock`.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                std::fs::remove_file(entry.path())?;
            }
        }
        self.serve()
    }

    /// The next registration, or `None` after `timeout` (a hang guard, not a measurement).
    pub async fn next_registration(&mut self, timeout: Duration) -> Option<Registered> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Registrations received so far and not yet taken.
    pub fn try_next_registration(&mut self) -> Option<Registered> {
        self.rx.try_recv().ok()
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some((stop, _task)) = self.server.take() {
            let _ = stop.send(());
        }
    }
}
