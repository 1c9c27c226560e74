//! A fake kubelet PodResources server for tests: a real tonic `PodResourcesLister` on a
//! unix socket, answering `List` and `Get` from a pod table the test sets, with kubelet's
//! answers for a missing pod and the behaviours of older kubelets (`Get` not implemented
//! before 1.27, "disabled" without the `KubeletPodResourcesGet` feature gate), an optional
//! delay (a kubelet that hangs), and call counters.
//!
//! It runs on its own thread with its own runtime, so synchronous tests (which run a CNI
//! binary as a child process) can use it. Dropping it stops it and removes the socket.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::podresources::v1::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use crate::podresources::v1::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};

/// How the fake answers `Get`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GetMode {
    /// kubelet ≥ 1.27 with the feature gate: the pod, or Unknown "pod … not found".
    #[default]
    Implemented,
    /// kubelet < 1.27: the method does not exist (gRPC Unimplemented).
    Unimplemented,
    /// kubelet ≥ 1.27 without the `KubeletPodResourcesGet` feature gate: Unknown
    /// "PodResources API Get method disabled", as kubelet's server_v1.go answers.
    Disabled,
}

#[derive(Default)]
struct Shared {
    pods: Mutex<Vec<PodResources>>,
    get_mode: Mutex<GetMode>,
    delay: Mutex<Duration>,
    list_calls: AtomicUsize,
    get_calls: AtomicUsize,
    allocatable_calls: AtomicUsize,
}

impl Shared {
    async fn pause(&self) {
        let d = *self.delay.lock().unwrap();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

struct Service(Arc<Shared>);

#[tonic::async_trait]
impl PodResourcesLister for Service {
    async fn list(
        &self,
        _req: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.0.list_calls.fetch_add(1, Ordering::SeqCst);
        self.0.pause().await;
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: self.0.pods.lock().unwrap().clone(),
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _req: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        self.0.allocatable_calls.fetch_add(1, Ordering::SeqCst);
        self.0.pause().await;
        Ok(Response::new(AllocatableResourcesResponse::default()))
    }

    async fn get(
        &self,
        req: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        self.0.get_calls.fetch_add(1, Ordering::SeqCst);
        self.0.pause().await;
        let mode = *self.0.get_mode.lock().unwrap();
        match mode {
            GetMode::Unimplemented => return Err(Status::unimplemented("")),
            GetMode::Disabled => {
                return Err(Status::unknown("PodResources API Get method disabled"));
            }
            GetMode::Implemented => {}
        }
        let req = req.into_inner();
        let pods = self.0.pods.lock().unwrap();
        match pods
            .iter()
            .find(|p| p.name == req.pod_name && p.namespace == req.pod_namespace)
        {
            Some(p) => Ok(Response::new(GetPodResourcesResponse {
                pod_resources: Some(p.clone()),
            })),
            // kubelet's wording (pkg/kubelet/apis/podresources/server_v1.go).
            None => Err(Status::unknown(format!(
                "pod {} in namespace {} not found",
                req.pod_name, req.pod_namespace
            ))),
        }
    }
}

/// A pod with one container `main` holding `devices` (`(resource name, device IDs)`).
pub fn pod(namespace: &str, name: &str, devices: &[(&str, &[&str])]) -> PodResources {
    PodResources {
        name: name.to_string(),
        namespace: namespace.to_string(),
        containers: vec![ContainerResources {
            name: "main".to_string(),
            devices: devices
                .iter()
                .map(|(r, ids)| ContainerDevices {
                    resource_name: r.to_string(),
                    device_ids: ids.iter().map(|s| s.to_string()).collect(),
                    topology: None,
                })
                .collect(),
            ..Default::default()
        }],
    }
}

/// The fake server. Dropping it stops it and removes its socket.
pub struct FakePodResources {
    socket: PathBuf,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePodResources {
    /// Serves `socket` (creating its directory; a stale socket file is replaced).
    pub fn start(socket: impl AsRef<Path>) -> io::Result<Self> {
        let socket = socket.as_ref().to_path_buf();
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&socket);
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let svc = Service(shared.clone());
        let path = socket.clone();
        let thread = std::thread::Builder::new()
            .name("fake-podresources".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match UnixListener::bind(&path) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let server = Server::builder()
                        .add_service(PodResourcesListerServer::new(svc))
                        .serve_with_incoming(UnixListenerStream::new(listener));
                    // Not graceful: a delayed answer in flight must not hold up the stop.
                    tokio::select! {
                        _ = server => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels every connection task still running.
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the fake PodResources thread died"))??;
        Ok(Self {
            socket,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Replaces the pod table.
    pub fn set_pods(&self, pods: Vec<PodResources>) {
        *self.shared.pods.lock().unwrap() = pods;
    }

    /// Adds one pod (see [`pod`]).
    pub fn add_pod(&self, namespace: &str, name: &str, devices: &[(&str, &[&str])]) {
        self.shared
            .pods
            .lock()
            .unwrap()
            .push(pod(namespace, name, devices));
    }

    pub fn set_get_mode(&self, mode: GetMode) {
        *self.shared.get_mode.lock().unwrap() = mode;
    }

    /// Every answer waits `d` first (a kubelet that hangs).
    pub fn set_delay(&self, d: Duration) {
        *self.shared.delay.lock().unwrap() = d;
    }

    pub fn list_calls(&self) -> usize {
        self.shared.list_calls.load(Ordering::SeqCst)
    }

    pub fn get_calls(&self) -> usize {
        self.shared.get_calls.load(Ordering::SeqCst)
    }

    pub fn allocatable_calls(&self) -> usize {
        self.shared.allocatable_calls.load(Ordering::SeqCst)
    }

    /// Calls of any method so far.
    pub fn calls(&self) -> usize {
        self.list_calls() + self.get_calls() + self.allocatable_calls()
    }
}

impl Drop for FakePodResources {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect_unix;
    use crate::podresources::v1::pod_resources_lister_client::PodResourcesListerClient;

    #[test]
    fn answers_list_and_get_like_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakePodResources::start(dir.path().join("pr/kubelet.sock")).unwrap();
        fake.add_pod(
            "default",
            "train-0",
            &[("nvidia.com/gpu", &["GPU-a", "GPU-b"])],
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = PodResourcesListerClient::new(connect_unix(fake.socket()).await.unwrap());
            let l = c
                .list(ListPodResourcesRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(l.pod_resources.len(), 1);
            let g = c
                .get(GetPodResourcesRequest {
                    pod_name: "train-0".into(),
                    pod_namespace: "default".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let p = g.pod_resources.unwrap();
            assert_eq!(p.containers[0].devices[0].device_ids, ["GPU-a", "GPU-b"]);
            let e = c
                .get(GetPodResourcesRequest {
                    pod_name: "nope".into(),
                    pod_namespace: "default".into(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unknown);
            assert!(e.message().contains("not found"), "{e}");
            fake.set_get_mode(GetMode::Unimplemented);
            let e = c.get(GetPodResourcesRequest::default()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unimplemented);
            fake.set_get_mode(GetMode::Disabled);
            let e = c.get(GetPodResourcesRequest::default()).await.unwrap_err();
            assert_eq!(e.message(), "PodResources API Get method disabled");
        });
        assert_eq!((fake.list_calls(), fake.get_calls()), (1, 4));
        let sock = fake.socket().to_path_buf();
        drop(fake);
        assert!(!sock.exists(), "the socket is removed on drop");
    }

    #[test]
    fn a_delayed_answer_does_not_hold_up_the_drop() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakePodResources::start(dir.path().join("kubelet.sock")).unwrap();
        fake.set_delay(Duration::from_secs(30));
        let sock = fake.socket().to_path_buf();
        let client = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = PodResourcesListerClient::new(connect_unix(&sock).await.unwrap());
                c.list(ListPodResourcesRequest {}).await
            })
        });
        while fake.list_calls() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(fake);
        // A stop that waited for the call in flight would have delivered its answer (Ok,
        // after 30 s); a stop that cut it short fails it.
        assert!(client.join().unwrap().is_err(), "the pending call fails");
    }
}
