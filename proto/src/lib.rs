//! kubelet device plugin API v1beta1 (`k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1`) and
//! PodResources API v1 (`k8s.io/kubelet/pkg/apis/podresources/v1`), generated at build time
//! from `proto/` without `protoc`, plus the unix-socket plumbing both sides need.
#![forbid(unsafe_code)]

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated messages, `Registration` and `DevicePlugin` clients and servers.
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// kubelet's PodResources API (`PodResourcesLister`: `List`, `GetAllocatableResources`,
/// `Get`), which says which devices kubelet allocated to which pod.
pub mod podresources {
    pub mod v1 {
        tonic::include_proto!("v1");
    }
    /// kubelet's PodResources socket (below the host root on a node).
    pub const SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
    /// kubelet's own limit on a PodResources message (grpc-go client default is 4 MiB;
    /// `List` on a busy node can be larger).
    pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
}

#[cfg(feature = "fake-kubelet")]
pub mod fake_kubelet;

#[cfg(feature = "fake-podresources")]
pub mod fake_podresources;

/// API version string sent in `RegisterRequest.version`.
pub const VERSION: &str = "v1beta1";
/// `Device.health` of a usable device.
pub const HEALTHY: &str = "Healthy";
/// `Device.health` of a device kubelet must not hand out.
pub const UNHEALTHY: &str = "Unhealthy";
/// kubelet's registration socket, inside the device-plugins directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// Where kubelet keeps plugin sockets.
pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";

/// Why [`connect_unix`] failed. tonic's own message is only "transport error"; this one
/// carries the causes too ("transport error: Connection refused (os error 111)"), which is
/// what an operator needs to tell a stale socket from a permission problem.
#[derive(Debug)]
pub struct ConnectError(String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
    /// The error and its sources, each once: hyper and tonic repeat an inner message in
    /// their own.
    fn from_chain(e: &dyn std::error::Error) -> Self {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(inner) = cur {
            let t = inner.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            cur = inner.source();
        }
        ConnectError(s)
    }
}

/// A gRPC channel over the unix socket at `path`.
///
/// The `:authority` is `localhost`, which is what kubelet (grpc-go) sends since 1.26; the
/// URI is only a placeholder, the connector decides where bytes go.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, ConnectError> {
    let path = path.as_ref().to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| ConnectError::from_chain(&e))
}

#[cfg(test)]
#[rustfmt::skip] // byte tables read better one field per line
mod tests {
    //! Field numbers are the wire format kubelet speaks: each message is encoded and
    //! compared byte for byte with the tags of kubelet's api.proto.
    use super::v1beta1::*;
    use prost::Message;

    /// `(field number, wire type)` as a protobuf tag byte.
    fn tag(field: u8, wire: u8) -> u8 {
        (field << 3) | wire
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn registration_messages() {
        let req = RegisterRequest {
            version: s("v"),
            endpoint: s("e"),
            resource_name: s("r"),
            options: Some(DevicePluginOptions {
                pre_start_required: true,
                get_preferred_allocation_available: true,
            }),
        };
        assert_eq!(
            req.encode_to_vec(),
            [
                tag(1, 2), 1, b'v',
                tag(2, 2), 1, b'e',
                tag(3, 2), 1, b'r',
                tag(4, 2), 4, tag(1, 0), 1, tag(2, 0), 1,
            ]
        );
    }

    #[test]
    fn device_list() {
        let resp = ListAndWatchResponse {
            devices: vec![Device {
                id: s("a"),
                health: s("h"),
                topology: Some(TopologyInfo {
                    nodes: vec![NumaNode { id: 1 }],
                }),
            }],
        };
        assert_eq!(
            resp.encode_to_vec(),
            [
                tag(1, 2), 12,
                tag(1, 2), 1, b'a',
                tag(2, 2), 1, b'h',
                tag(3, 2), 4, tag(1, 2), 2, tag(1, 0), 1,
            ]
        );
    }

    #[test]
    fn preferred_allocation() {
        let req = PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec![s("a")],
                must_include_device_i_ds: vec![s("m")],
                allocation_size: 2,
            }],
        };
        assert_eq!(
            req.encode_to_vec(),
            [
                tag(1, 2), 8,
                tag(1, 2), 1, b'a',
                tag(2, 2), 1, b'm',
                tag(3, 0), 2,
            ]
        );
        let resp = PreferredAllocationResponse {
            container_responses: vec![ContainerPreferredAllocationResponse {
                device_i_ds: vec![s("a")],
            }],
        };
        assert_eq!(resp.encode_to_vec(), [tag(1, 2), 3, tag(1, 2), 1, b'a']);
    }

    #[test]
    fn allocation() {
        let req = AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![s("a")],
            }],
        };
        assert_eq!(req.encode_to_vec(), [tag(1, 2), 3, tag(1, 2), 1, b'a']);
        let resp = ContainerAllocateResponse {
            envs: [(s("k"), s("v"))].into(),
            mounts: vec![Mount {
                container_path: s("c"),
                host_path: s("h"),
                read_only: true,
            }],
            devices: vec![DeviceSpec {
                container_path: s("c"),
                host_path: s("h"),
                permissions: s("p"),
            }],
            annotations: [(s("x"), s("y"))].into(),
            cdi_devices: vec![CdiDevice { name: s("n") }],
        };
        assert_eq!(
            resp.encode_to_vec(),
            [
                tag(1, 2), 6, tag(1, 2), 1, b'k', tag(2, 2), 1, b'v',
                tag(2, 2), 8, tag(1, 2), 1, b'c', tag(2, 2), 1, b'h', tag(3, 0), 1,
                tag(3, 2), 9, tag(1, 2), 1, b'c', tag(2, 2), 1, b'h', tag(3, 2), 1, b'p',
                tag(4, 2), 6, tag(1, 2), 1, b'x', tag(2, 2), 1, b'y',
                tag(5, 2), 3, tag(1, 2), 1, b'n',
            ]
        );
        let pre = PreStartContainerRequest {
            devices_ids: vec![s("a")],
        };
        assert_eq!(pre.encode_to_vec(), [tag(1, 2), 1, b'a']);
    }
}

#[cfg(test)]
#[rustfmt::skip] // byte tables read better one field per line
mod podresources_wire {
    //! kubelet's PodResources v1 field numbers, pinned byte for byte: every field of every
    //! message is set, encoded, and compared with the tags of kubelet's api.proto
    //! (`k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`).
    use super::podresources::v1::*;
    use prost::Message;

    fn tag(field: u8, wire: u8) -> u8 {
        (field << 3) | wire
    }

    /// A length-delimited field (wire type 2) holding `body` (< 128 bytes).
    fn ld(field: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut v = vec![tag(field, 2), body.len() as u8];
        v.extend_from_slice(body);
        v
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn topology() -> TopologyInfo {
        TopologyInfo { nodes: vec![NumaNode { id: 1 }] }
    }
    /// TopologyInfo { nodes: [NUMANode { ID: 1 }] }
    fn topology_bytes() -> Vec<u8> {
        ld(1, &[tag(1, 0), 1])
    }

    fn devices() -> ContainerDevices {
        ContainerDevices {
            resource_name: s("r"),
            device_ids: vec![s("d"), s("e")],
            topology: Some(topology()),
        }
    }
    fn devices_bytes() -> Vec<u8> {
        cat(&[
            ld(1, b"r"),              // resource_name = 1
            ld(2, b"d"),              // device_ids = 2
            ld(2, b"e"),
            ld(3, &topology_bytes()), // topology = 3
        ])
    }

    fn memory() -> ContainerMemory {
        ContainerMemory { memory_type: s("m"), size: 2, topology: Some(topology()) }
    }
    fn memory_bytes() -> Vec<u8> {
        cat(&[
            ld(1, b"m"),              // memory_type = 1
            vec![tag(2, 0), 2],       // size = 2
            ld(3, &topology_bytes()), // topology = 3
        ])
    }

    fn pod() -> PodResources {
        PodResources {
            name: s("p"),
            namespace: s("n"),
            containers: vec![ContainerResources {
                name: s("c"),
                devices: vec![devices()],
                cpu_ids: vec![3, 4],
                memory: vec![memory()],
                dynamic_resources: vec![DynamicResource {
                    claim_name: s("a"),
                    claim_namespace: s("b"),
                    claim_resources: vec![ClaimResource {
                        cdi_devices: vec![CdiDevice { name: s("x") }],
                        driver_name: s("d"),
                        pool_name: s("p"),
                        device_name: s("v"),
                    }],
                }],
            }],
        }
    }
    fn pod_bytes() -> Vec<u8> {
        let claim = cat(&[
            ld(1, &ld(1, b"x")), // cdi_devices = 1 { name = 1 }
            ld(2, b"d"),         // driver_name = 2
            ld(3, b"p"),         // pool_name = 3
            ld(4, b"v"),         // device_name = 4
        ]);
        let dynamic = cat(&[
            ld(2, b"a"),   // claim_name = 2 (1 is the removed class_name)
            ld(3, b"b"),   // claim_namespace = 3
            ld(4, &claim), // claim_resources = 4
        ]);
        let container = cat(&[
            ld(1, b"c"),              // name = 1
            ld(2, &devices_bytes()),  // devices = 2
            ld(3, &[3, 4]),           // cpu_ids = 3 (packed int64)
            ld(4, &memory_bytes()),   // memory = 4
            ld(5, &dynamic),          // dynamic_resources = 5
        ]);
        cat(&[
            ld(1, b"p"),       // name = 1
            ld(2, b"n"),       // namespace = 2
            ld(3, &container), // containers = 3
        ])
    }

    #[test]
    fn get_request_and_response() {
        let req = GetPodResourcesRequest { pod_name: s("p"), pod_namespace: s("n") };
        assert_eq!(req.encode_to_vec(), cat(&[ld(1, b"p"), ld(2, b"n")]));
        let resp = GetPodResourcesResponse { pod_resources: Some(pod()) };
        assert_eq!(resp.encode_to_vec(), ld(1, &pod_bytes()));
        assert_eq!(GetPodResourcesResponse::decode(&*ld(1, &pod_bytes())).unwrap(), resp);
    }

    #[test]
    fn list_response() {
        let resp = ListPodResourcesResponse { pod_resources: vec![pod(), pod()] };
        assert_eq!(resp.encode_to_vec(), cat(&[ld(1, &pod_bytes()), ld(1, &pod_bytes())]));
        assert!(ListPodResourcesRequest {}.encode_to_vec().is_empty());
    }

    #[test]
    fn allocatable_response() {
        let resp = AllocatableResourcesResponse {
            devices: vec![devices()],
            cpu_ids: vec![5, 6],
            memory: vec![memory()],
        };
        assert_eq!(
            resp.encode_to_vec(),
            cat(&[ld(1, &devices_bytes()), ld(2, &[5, 6]), ld(3, &memory_bytes())])
        );
        assert!(AllocatableResourcesRequest {}.encode_to_vec().is_empty());
    }

    #[test]
    fn service_and_method_paths_are_kubelets() {
        use super::podresources::v1::pod_resources_lister_server::SERVICE_NAME;
        assert_eq!(SERVICE_NAME, "v1.PodResourcesLister");
    }
}
