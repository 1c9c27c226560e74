//! kubelet device plugin API v1beta1 (`k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1`),
//! generated at build time from `proto/deviceplugin/v1beta1/api.proto` without `protoc`,
//! plus the unix-socket plumbing both sides of the API need.
#![forbid(unsafe_code)]

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated messages, `Registration` and `DevicePlugin` clients and servers.
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

#[cfg(feature = "fake-kubelet")]
pub mod fake_kubelet;

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

/// A gRPC channel over the unix socket at `path`.
///
/// The `:authority` is `localhost`, which is what kubelet (grpc-go) sends since 1.26; the
/// URI is only a placeholder, the connector decides where bytes go.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let path = path.as_ref().to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
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
