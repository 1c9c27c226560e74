//! kubelet's PodResources API, client side: which devices kubelet allocated to one pod.
//!
//! The socket is `<host root>/var/lib/kubelet/pod-resources/kubelet.sock`; the node's admin
//! may name another one with `RAILVF_PODRESOURCES_SOCKET` (an absolute path on the node,
//! for kubelets with another `--root-dir`). It never comes from the network config.
//!
//! `Get` (kubelet ≥ 1.27 with the `KubeletPodResourcesGet` feature gate) asks for the one
//! pod; older kubelets answer Unimplemented and newer ones without the gate answer Unknown
//! "PodResources API Get method disabled": then `List` is used. Everything (connect and
//! calls) is bounded by [`TIMEOUT`]: a CNI plugin must not hang a pod's sandbox creation.
//! The tokio runtime (current-thread) is built only when the socket exists, at the call.

use std::ffi::OsString;
use std::fmt;
use std::path::{Component, PathBuf};
use std::time::Duration;

use railvf_host::HostRoot;
use railvf_proto::podresources::v1::pod_resources_lister_client::PodResourcesListerClient;
use railvf_proto::podresources::v1::{
    GetPodResourcesRequest, ListPodResourcesRequest, PodResources as PodResourcesMsg,
};
use railvf_proto::podresources::{MAX_MESSAGE_BYTES, SOCKET};
use tonic::Code;

/// The node admin's override of the socket path.
pub const SOCKET_ENV: &str = "RAILVF_PODRESOURCES_SOCKET";
/// Bound on the whole exchange with kubelet (connect, `Get`, `List`).
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A pod, as `CNI_ARGS` names it (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One device kubelet allocated to a container of the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub container: String,
    pub resource: String,
    pub id: String,
}

/// Which method answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Get,
    List,
}

/// The devices of one pod, across its containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDevices {
    pub via: Via,
    pub devices: Vec<Device>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum PodResourcesError {
    #[error("kubelet's PodResources socket {0} does not exist")]
    NoSocket(PathBuf),
    #[error("{SOCKET_ENV} is {0:?}: expected an absolute path without '..'")]
    BadSocketEnv(String),
    #[error("cannot connect to kubelet's PodResources socket {path}: {why}")]
    Connect { path: PathBuf, why: String },
    #[error("PodResources {method} failed: {code:?}: {message}")]
    Call {
        method: &'static str,
        code: Code,
        message: String,
    },
    #[error("kubelet does not know pod {pod} ({how})")]
    PodNotFound { pod: PodRef, how: String },
    #[error("kubelet's PodResources socket {path} did not answer within {ms} ms")]
    Timeout { path: PathBuf, ms: u128 },
    #[error("cannot start the gRPC client: {0}")]
    Runtime(String),
}

/// Where the devices of a pod come from (kubelet; a stand-in in unit tests).
pub trait PodResources {
    fn pod_devices(&self, pod: &PodRef) -> Result<PodDevices, PodResourcesError>;
}

/// kubelet's PodResources socket.
#[derive(Clone, Debug)]
pub struct Kubelet {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Kubelet {
    /// The socket: `env` (the value of [`SOCKET_ENV`]) when set, else kubelet's default
    /// path below the host root.
    pub fn locate(root: &HostRoot, env: Option<OsString>) -> Result<Self, PodResourcesError> {
        let socket = match env.filter(|v| !v.is_empty()) {
            Some(v) => {
                let p = PathBuf::from(&v);
                if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                    return Err(PodResourcesError::BadSocketEnv(
                        v.to_string_lossy().into_owned(),
                    ));
                }
                p
            }
            None => root.join(SOCKET.trim_start_matches('/')),
        };
        Ok(Self {
            socket,
            timeout: TIMEOUT,
        })
    }

    /// [`Kubelet::locate`] with the process environment.
    pub fn from_env(root: &HostRoot) -> Result<Self, PodResourcesError> {
        Self::locate(root, std::env::var_os(SOCKET_ENV))
    }
}

impl PodResources for Kubelet {
    fn pod_devices(&self, pod: &PodRef) -> Result<PodDevices, PodResourcesError> {
        // No socket, no runtime: the common "not on Kubernetes" case costs one stat.
        if std::fs::symlink_metadata(&self.socket).is_err() {
            return Err(PodResourcesError::NoSocket(self.socket.clone()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| PodResourcesError::Runtime(e.to_string()))?;
        rt.block_on(async {
            tokio::time::timeout(self.timeout, query(self.socket.clone(), pod))
                .await
                .unwrap_or_else(|_| {
                    Err(PodResourcesError::Timeout {
                        path: self.socket.clone(),
                        ms: self.timeout.as_millis(),
                    })
                })
        })
        // Dropping the runtime cancels the connection tasks tonic spawned.
    }
}

/// Whether `Get`'s error means "use `List`": the method is missing (kubelet < 1.27) or
/// switched off (no `KubeletPodResourcesGet` feature gate).
fn get_unavailable(s: &tonic::Status) -> bool {
    s.code() == Code::Unimplemented
        || (s.code() == Code::Unknown && s.message().contains("Get method disabled"))
}

async fn query(path: PathBuf, pod: &PodRef) -> Result<PodDevices, PodResourcesError> {
    let channel =
        railvf_proto::connect_unix(&path)
            .await
            .map_err(|e| PodResourcesError::Connect {
                path: path.clone(),
                why: e.to_string(),
            })?;
    let mut client =
        PodResourcesListerClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let get = client
        .get(GetPodResourcesRequest {
            pod_name: pod.name.clone(),
            pod_namespace: pod.namespace.clone(),
        })
        .await;
    match get {
        Ok(r) => match r.into_inner().pod_resources {
            Some(p) => Ok(devices(Via::Get, &p)),
            None => Err(PodResourcesError::PodNotFound {
                pod: pod.clone(),
                how: "Get answered without the pod".into(),
            }),
        },
        Err(s) if get_unavailable(&s) => {
            let list = client
                .list(ListPodResourcesRequest {})
                .await
                .map_err(|s| call_error("List", s))?
                .into_inner();
            list.pod_resources
                .iter()
                .find(|p| p.namespace == pod.namespace && p.name == pod.name)
                .map(|p| devices(Via::List, p))
                .ok_or_else(|| PodResourcesError::PodNotFound {
                    pod: pod.clone(),
                    how: format!("not among the {} pods of List", list.pod_resources.len()),
                })
        }
        Err(s) if s.code() == Code::Unknown && s.message().contains("not found") => {
            Err(PodResourcesError::PodNotFound {
                pod: pod.clone(),
                how: format!("Get: {}", s.message()),
            })
        }
        Err(s) => Err(call_error("Get", s)),
    }
}

fn call_error(method: &'static str, s: tonic::Status) -> PodResourcesError {
    PodResourcesError::Call {
        method,
        code: s.code(),
        message: s.message().chars().take(300).collect(),
    }
}

fn devices(via: Via, p: &PodResourcesMsg) -> PodDevices {
    let devices = p
        .containers
        .iter()
        .flat_map(|c| {
            c.devices.iter().flat_map(move |d| {
                d.device_ids.iter().map(move |id| Device {
                    container: c.name.clone(),
                    resource: d.resource_name.clone(),
                    id: id.clone(),
                })
            })
        })
        .collect();
    PodDevices { via, devices }
}

#[cfg(test)]
mod tests {
    use super::*;
    use railvf_proto::fake_podresources::{FakePodResources, GetMode};

    fn pod() -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: "train-0".into(),
        }
    }

    fn kubelet(fake: &FakePodResources) -> Kubelet {
        Kubelet {
            socket: fake.socket().to_path_buf(),
            timeout: TIMEOUT,
        }
    }

    #[test]
    fn get_answers_with_every_container_s_devices() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakePodResources::start(dir.path().join("kubelet.sock")).unwrap();
        let mut p = railvf_proto::fake_podresources::pod(
            "default",
            "train-0",
            &[
                ("nvidia.com/gpu", &["GPU-a"]),
                ("nvidia.com/dgx_h200_vfs", &["0000:18:00.1"]),
            ],
        );
        p.containers.push(p.containers[0].clone());
        p.containers[1].name = "sidecar".into();
        p.containers[1].devices[0].device_ids = vec!["GPU-b".into()];
        fake.set_pods(vec![p]);
        let got = kubelet(&fake).pod_devices(&pod()).unwrap();
        assert_eq!(got.via, Via::Get);
        let ids: Vec<_> = got
            .devices
            .iter()
            .map(|d| (d.container.as_str(), d.resource.as_str(), d.id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("main", "nvidia.com/gpu", "GPU-a"),
                ("main", "nvidia.com/dgx_h200_vfs", "0000:18:00.1"),
                ("sidecar", "nvidia.com/gpu", "GPU-b"),
                ("sidecar", "nvidia.com/dgx_h200_vfs", "0000:18:00.1"),
            ]
        );
        assert_eq!((fake.get_calls(), fake.list_calls()), (1, 0));
    }

    #[test]
    fn falls_back_to_list_when_get_is_missing_or_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakePodResources::start(dir.path().join("kubelet.sock")).unwrap();
        fake.add_pod("other", "x", &[("nvidia.com/gpu", &["GPU-z"])]);
        fake.add_pod("default", "train-0", &[("nvidia.com/gpu", &["GPU-a"])]);
        for (mode, lists) in [(GetMode::Unimplemented, 1), (GetMode::Disabled, 2)] {
            fake.set_get_mode(mode);
            let got = kubelet(&fake).pod_devices(&pod()).unwrap();
            assert_eq!(got.via, Via::List, "{mode:?}");
            assert_eq!(got.devices.len(), 1);
            assert_eq!(got.devices[0].id, "GPU-a");
            assert_eq!(fake.list_calls(), lists);
        }
        // Not in List either: said so.
        let e = kubelet(&fake)
            .pod_devices(&PodRef {
                namespace: "default".into(),
                name: "gone".into(),
            })
            .unwrap_err();
        assert!(matches!(e, PodResourcesError::PodNotFound { .. }), "{e}");
    }

    #[test]
    fn an_unknown_pod_is_not_found_without_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakePodResources::start(dir.path().join("kubelet.sock")).unwrap();
        let e = kubelet(&fake).pod_devices(&pod()).unwrap_err();
        assert!(e.to_string().contains("default/train-0"), "{e}");
        assert!(matches!(e, PodResourcesError::PodNotFound { .. }), "{e}");
        assert_eq!(fake.list_calls(), 0);
    }

    #[test]
    fn a_hanging_kubelet_costs_at_most_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakePodResources::start(dir.path().join("kubelet.sock")).unwrap();
        fake.set_delay(Duration::from_secs(30));
        let k = Kubelet {
            socket: fake.socket().to_path_buf(),
            timeout: Duration::from_millis(200),
        };
        // The answer comes after 30 s: an error at all means the bound cut it short.
        let e = k.pod_devices(&pod()).unwrap_err();
        assert!(matches!(e, PodResourcesError::Timeout { .. }), "{e}");
    }

    #[test]
    fn no_socket_is_reported_without_a_connection_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path()).unwrap();
        let k = Kubelet::locate(&root, None).unwrap();
        assert_eq!(
            k.socket,
            dir.path()
                .join("var/lib/kubelet/pod-resources/kubelet.sock")
        );
        let e = k.pod_devices(&pod()).unwrap_err();
        assert!(matches!(e, PodResourcesError::NoSocket(_)), "{e}");

        // A socket file nobody listens on: a connection error, quickly.
        std::fs::create_dir_all(k.socket.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&k.socket).unwrap());
        let e = k.pod_devices(&pod()).unwrap_err();
        assert!(matches!(e, PodResourcesError::Connect { .. }), "{e}");
    }

    #[test]
    fn the_env_override_must_be_an_absolute_path() {
        let root = HostRoot::new("/").unwrap();
        let k = Kubelet::locate(
            &root,
            Some("/var/lib/k0s/kubelet/pod-resources/kubelet.sock".into()),
        )
        .unwrap();
        assert_eq!(
            k.socket,
            PathBuf::from("/var/lib/k0s/kubelet/pod-resources/kubelet.sock")
        );
        for bad in ["relative.sock", "/var/lib/../../etc/x.sock"] {
            let e = Kubelet::locate(&root, Some(bad.into())).unwrap_err();
            assert!(
                matches!(e, PodResourcesError::BadSocketEnv(_)),
                "{bad}: {e}"
            );
        }
        // Empty means unset.
        let k = Kubelet::locate(&root, Some("".into())).unwrap();
        assert_eq!(k.socket, PathBuf::from(SOCKET));
    }
}
