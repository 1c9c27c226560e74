//! The `DevicePlugin` gRPC service of one resource.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use railvf_host::HostRoot;
use railvf_proto::v1beta1::device_plugin_server::DevicePlugin;
use railvf_proto::v1beta1::{
    AllocateRequest, AllocateResponse, CdiDevice, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, DeviceSpec, Empty,
    ListAndWatchResponse, NumaNode, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, TopologyInfo,
};
use railvf_proto::{HEALTHY, UNHEALTHY};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::allocate::{self, AllocError};
use crate::cdi::{self, SharedSpec};
use crate::devinfo::DevinfoFiles;
use crate::metrics::{Metrics, result_label};
use crate::pool::{Allocations, DeviceSet};

/// What every service instance of a resource shares.
pub struct ResourceCtx {
    pub full_name: String,
    pub devices: watch::Receiver<Arc<DeviceSet>>,
    pub allocations: Arc<Allocations>,
    pub root: HostRoot,
    pub devinfo_dir: PathBuf,
    pub devinfo_files: Arc<DevinfoFiles>,
    pub metrics: Arc<Metrics>,
    /// With `--use-cdi`: the resource's CDI spec; `Allocate` answers CDI names then.
    pub cdi: Option<SharedSpec>,
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

impl ResourceCtx {
    /// The list kubelet gets: ID, health, NUMA node (none with `excludeTopology`).
    pub fn device_list(&self, set: &DeviceSet) -> Vec<Device> {
        set.devices
            .values()
            .map(|d| Device {
                id: d.addr.to_string(),
                health: if d.health.is_healthy() {
                    HEALTHY
                } else {
                    UNHEALTHY
                }
                .to_string(),
                topology: match d.numa {
                    Some(n) if !set.exclude_topology => Some(TopologyInfo {
                        nodes: vec![NumaNode { id: i64::from(n) }],
                    }),
                    _ => None,
                },
            })
            .collect()
    }
}

/// One server instance; `stop` ends its `ListAndWatch` streams so the server can shut
/// down gracefully when kubelet restarts or the plugin exits.
pub struct PluginService {
    ctx: Arc<ResourceCtx>,
    stop: watch::Receiver<bool>,
}

impl PluginService {
    pub fn new(ctx: Arc<ResourceCtx>, stop: watch::Receiver<bool>) -> Self {
        Self { ctx, stop }
    }
}

pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

fn status(e: AllocError) -> Status {
    match e {
        AllocError::InvalidArgument(m) => Status::invalid_argument(m),
        AllocError::FailedPrecondition(m) => Status::failed_precondition(m),
        AllocError::Internal(m) => Status::internal(m),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let ctx = self.ctx.clone();
        let mut rx = ctx.devices.clone();
        let mut stop = self.stop.clone();
        let (tx, out) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut last: Option<Vec<Device>> = None;
            loop {
                let list = ctx.device_list(&rx.borrow_and_update());
                if last.as_ref() != Some(&list) {
                    let resp = ListAndWatchResponse {
                        devices: list.clone(),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    tracing::debug!(resource = %ctx.full_name, devices = list.len(), "sent device list");
                    last = Some(list);
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let r = self.preferred(&req);
        let name = &self.ctx.full_name;
        self.ctx
            .metrics
            .observe_preferred(name, result_label(&r), started.elapsed());
        // The first few: a hostile request's list must not make a megabyte log line.
        let sizes: Vec<i32> = req
            .container_requests
            .iter()
            .take(8)
            .map(|c| c.allocation_size)
            .collect();
        let available: usize = req
            .container_requests
            .iter()
            .map(|c| c.available_device_i_ds.len())
            .sum();
        match &r {
            Ok(resp) => {
                let chosen: Vec<&str> = resp
                    .get_ref()
                    .container_responses
                    .iter()
                    .flat_map(|c| c.device_i_ds.iter().map(String::as_str))
                    .collect();
                tracing::info!(
                    resource = %name,
                    sizes = ?sizes,
                    available,
                    devices = %allocate::logged_ids(chosen.iter().copied()),
                    duration_ms = ms(started),
                    "GetPreferredAllocation"
                );
            }
            Err(e) => tracing::warn!(
                resource = %name,
                sizes = ?sizes,
                available,
                code = ?e.code(),
                duration_ms = ms(started),
                "GetPreferredAllocation refused: {}",
                e.message()
            ),
        }
        r
    }

    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let r = self.allocate_all(&req);
        let name = &self.ctx.full_name;
        self.ctx
            .metrics
            .observe_allocate(name, result_label(&r), started.elapsed());
        let ids: Vec<&str> = req
            .container_requests
            .iter()
            .flat_map(|c| c.devices_ids.iter().map(String::as_str))
            .collect();
        match &r {
            Ok(_) => tracing::info!(
                resource = %name,
                devices = %allocate::logged_ids(ids.iter().copied()),
                containers = req.container_requests.len(),
                duration_ms = ms(started),
                "Allocate"
            ),
            Err(e) => tracing::warn!(
                resource = %name,
                devices = %allocate::logged_ids(ids.iter().copied()),
                containers = req.container_requests.len(),
                code = ?e.code(),
                duration_ms = ms(started),
                "Allocate refused: {}",
                e.message()
            ),
        }
        r
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        // Not requested in the options; answer anyway so a confused kubelet does not fail.
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// kubelet sends one container per call; a request of more is refused before any work
/// (each container's answer reads sysfs and may write files).
const MAX_CONTAINER_REQUESTS: usize = 64;

fn check_container_count(n: usize) -> Result<(), Status> {
    if n == 0 {
        return Err(Status::invalid_argument(
            "the request has no container_requests",
        ));
    }
    if n > MAX_CONTAINER_REQUESTS {
        return Err(Status::invalid_argument(format!(
            "the request has {n} container_requests, more than the {MAX_CONTAINER_REQUESTS} railvf answers (kubelet sends one)"
        )));
    }
    Ok(())
}

impl PluginService {
    fn preferred(
        &self,
        req: &PreferredAllocationRequest,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        check_container_count(req.container_requests.len())?;
        let set = self.ctx.devices.borrow().clone();
        let mut container_responses = Vec::with_capacity(req.container_requests.len());
        let name = &self.ctx.full_name;
        for c in &req.container_requests {
            let p = allocate::preferred(
                &set,
                name,
                &c.available_device_i_ds,
                &c.must_include_device_i_ds,
                c.allocation_size,
            )
            .map_err(status)?;
            if !p.unknown_available.is_empty() {
                tracing::warn!(
                    resource = %name,
                    "GetPreferredAllocation: {} available_deviceIDs are not {name} devices on this node, left out of the choice: {} (kubelet's device list is older than the plugin's, after VFs were removed or the config reloaded; it gets the new list on ListAndWatch)",
                    p.unknown_available.count,
                    p.unknown_available
                );
            }
            if !p.unknown_must.is_empty() {
                tracing::warn!(
                    resource = %name,
                    "GetPreferredAllocation: {} must_include_deviceIDs are not {name} devices on this node: {}; kept in the answer as kubelet requires, but Allocate will refuse them",
                    p.unknown_must.count,
                    p.unknown_must
                );
            }
            if p.repeated > 0 {
                tracing::warn!(
                    resource = %name,
                    "GetPreferredAllocation: {} device IDs were listed more than once; each was taken once",
                    p.repeated
                );
            }
            container_responses.push(ContainerPreferredAllocationResponse { device_i_ds: p.ids });
            // kubelet offers only free devices: whatever it lists is not allocated.
            let free: Vec<railvf_host::PciAddr> = c
                .available_device_i_ds
                .iter()
                .filter_map(|i| i.parse().ok())
                .collect();
            self.ctx.allocations.seen_free(&free);
        }
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    fn allocate_all(&self, req: &AllocateRequest) -> Result<Response<AllocateResponse>, Status> {
        check_container_count(req.container_requests.len())?;
        // One VF goes to one container: within a container `allocate_container` refuses a
        // repeat, across containers this does.
        // By address where the ID is one: `0000:1A:00.1` is `0000:1a:00.1`.
        let mut handed = std::collections::BTreeSet::new();
        for id in req.container_requests.iter().flat_map(|c| &c.devices_ids) {
            let key = id.parse::<railvf_host::PciAddr>().map_err(|_| id.as_str());
            if !handed.insert(key) {
                return Err(Status::invalid_argument(format!(
                    "device {} is asked for by more than one container of the request; kubelet gives each device to one container",
                    allocate::logged_ids([id.as_str()])
                )));
            }
        }
        let set = self.ctx.devices.borrow().clone();
        let mut container_responses = Vec::with_capacity(req.container_requests.len());
        for c in &req.container_requests {
            let a = allocate::allocate_container(
                &self.ctx.root,
                &set,
                &self.ctx.full_name,
                &c.devices_ids,
                &self.ctx.devinfo_dir,
            )
            .map_err(status)?;
            self.ctx
                .devinfo_files
                .record(a.devinfo_files.iter().cloned());
            self.ctx
                .allocations
                .handed_out(c.devices_ids.iter().filter_map(|i| i.parse().ok()));
            let (devices, cdi_devices) = match &self.ctx.cdi {
                // The runtime resolves the names when it creates the container, from the
                // spec as it is then: the VFs' nodes are in it before the names are given.
                Some(spec) => {
                    let mut spec = cdi::lock(spec);
                    spec.pin(&a.vfs).map_err(|e| {
                        Status::internal(format!(
                            "cannot write the CDI spec {}: {e}; the container's devices could not be resolved: check that its directory is writable",
                            spec.path.display()
                        ))
                    })?;
                    let names = a
                        .vfs
                        .iter()
                        .map(|(addr, _)| CdiDevice {
                            name: cdi::device_name(&spec.kind, addr),
                        })
                        .collect();
                    (Vec::new(), names)
                }
                None => (
                    a.devices
                        .into_iter()
                        .map(|p| DeviceSpec {
                            container_path: p.clone(),
                            host_path: p,
                            permissions: "rw".into(),
                        })
                        .collect(),
                    Vec::new(),
                ),
            };
            container_responses.push(ContainerAllocateResponse {
                envs: a.envs.into_iter().collect(),
                mounts: Vec::new(),
                devices,
                annotations: Default::default(),
                cdi_devices,
            });
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::pool::DeviceEntry;
    use railvf_host::PciAddr;
    use tokio_stream::StreamExt;

    fn set(health: &[(&str, bool)], in_pod: bool) -> Arc<DeviceSet> {
        set_x(health, in_pod, false)
    }

    fn set_x(health: &[(&str, bool)], in_pod: bool, exclude_topology: bool) -> Arc<DeviceSet> {
        let devices = health
            .iter()
            .map(|(a, ok)| {
                let addr: PciAddr = a.parse().unwrap();
                (
                    addr,
                    DeviceEntry {
                        addr,
                        pf: "0000:18:00.0".parse().unwrap(),
                        vf_index: 0,
                        numa: Some(1),
                        rail: Some(0),
                        health: if *ok {
                            Health::Healthy
                        } else {
                            Health::Unhealthy("port_state".into())
                        },
                        failed: Default::default(),
                        in_pod,
                    },
                )
            })
            .collect();
        Arc::new(DeviceSet {
            devices,
            exclude_topology,
            nccl_ib_hca: true,
            mad_devices: false,
        })
    }

    fn service(rx: watch::Receiver<Arc<DeviceSet>>) -> (PluginService, watch::Sender<bool>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = Arc::new(ResourceCtx {
            full_name: "nvidia.com/x".into(),
            devices: rx,
            allocations: Arc::default(),
            root: HostRoot::new("/nonexistent").unwrap(),
            devinfo_dir: PathBuf::from("/nonexistent"),
            devinfo_files: Arc::default(),
            metrics: Arc::default(),
            cdi: None,
        });
        (PluginService::new(ctx, stop_rx), stop_tx)
    }

    /// The stream sends the list at once, then only when what kubelet sees changes, and
    /// ends when the server instance stops. Driven by the channel alone: no timing.
    #[tokio::test]
    async fn list_and_watch_sends_changes_only_and_ends_on_stop() {
        let (tx, rx) = watch::channel(set(&[("0000:18:00.1", true)], false));
        let (svc, stop) = service(rx);
        let mut stream = svc
            .list_and_watch(Request::new(Empty {}))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.devices.len(), 1);
        assert_eq!(first.devices[0].health, HEALTHY);
        assert_eq!(first.devices[0].topology.as_ref().unwrap().nodes[0].id, 1);
        // Moving into a pod changes nothing kubelet sees: no message. A health change does.
        tx.send(set(&[("0000:18:00.1", true)], true)).unwrap();
        tx.send(set(&[("0000:18:00.1", false)], true)).unwrap();
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(next.devices[0].health, UNHEALTHY);
        // A device appears.
        tx.send(set(
            &[("0000:18:00.1", false), ("0000:18:00.2", true)],
            true,
        ))
        .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().devices.len(), 2);
        stop.send(true).unwrap();
        assert!(stream.next().await.is_none(), "the stream ends on stop");
    }

    /// A request kubelet never sends (thousands of containers; one VF for two containers)
    /// is refused before any work, and changes nothing.
    #[tokio::test]
    async fn requests_kubelet_never_sends_are_refused_up_front() {
        use railvf_proto::v1beta1::{
            ContainerAllocateRequest, ContainerPreferredAllocationRequest,
        };
        let (_tx, rx) = watch::channel(set(&[("0000:18:00.1", true)], false));
        let (svc, _stop) = service(rx);
        let many = PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest::default(); 100_000],
        };
        let e = svc
            .get_preferred_allocation(Request::new(many))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("100000 container_requests"), "{e}");

        let one = |id: &str| ContainerAllocateRequest {
            devices_ids: vec![id.into()],
        };
        let twice = AllocateRequest {
            container_requests: vec![one("0000:18:00.1"), one("0000:18:00.1")],
        };
        let e = svc.allocate(Request::new(twice)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("more than one container"), "{e}");
        // Another spelling of the same address is the same VF.
        let (_tx2, rx2) = watch::channel(set(&[("0000:1a:00.1", true)], false));
        let (svc2, _stop2) = service(rx2);
        let twice = AllocateRequest {
            container_requests: vec![one("0000:1a:00.1"), one("0000:1A:00.1")],
        };
        let e = svc2.allocate(Request::new(twice)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("more than one container"), "{e}");
        let vf = svc
            .ctx
            .devices
            .borrow()
            .devices
            .values()
            .next()
            .unwrap()
            .clone();
        assert!(!svc.ctx.allocations.is_allocated(&vf));
    }

    #[tokio::test]
    async fn exclude_topology_leaves_numa_out() {
        let (_tx, rx) = watch::channel(set_x(&[("0000:18:00.1", true)], false, true));
        let (svc, _stop) = service(rx);
        let mut stream = svc
            .list_and_watch(Request::new(Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert!(
            stream.next().await.unwrap().unwrap().devices[0]
                .topology
                .is_none()
        );
        let opts = svc
            .get_device_plugin_options(Request::new(Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert!(opts.get_preferred_allocation_available && !opts.pre_start_required);
    }
}
