//! Network Plumbing WG device-information files (device-info spec 1.1.0): how the device
//! plugin tells the CNI (through Multus) which PCI function and RDMA device a pod got.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pci::PciAddr;

pub const DEVINFO_VERSION: &str = "1.1.0";
/// Where device plugins put their files, relative to the host root.
pub const DP_DEVINFO_DIR: &str = "var/run/k8s.cni.cncf.io/devinfo/dp";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
    pub pci: PciDeviceInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    #[serde(rename = "pci-address")]
    pub pci_address: PciAddr,
    #[serde(
        rename = "rdma-device",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub rdma_device: String,
    #[serde(
        rename = "pf-pci-address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pf_pci_address: Option<PciAddr>,
}

impl DeviceInfo {
    pub fn pci(addr: PciAddr, rdma_device: Option<&str>, pf: Option<PciAddr>) -> Self {
        Self {
            kind: "pci".into(),
            version: DEVINFO_VERSION.into(),
            pci: PciDeviceInfo {
                pci_address: addr,
                rdma_device: rdma_device.unwrap_or_default().to_string(),
                pf_pci_address: pf,
            },
        }
    }
}

/// The file name both sides derive from the resource name and device id:
/// `<resource with / as ->-<device id>-device.json`.
pub fn dp_file_name(resource_name: &str, device_id: &PciAddr) -> String {
    format!(
        "{}-{}-device.json",
        resource_name.replace('/', "-"),
        device_id
    )
}

/// `<dir>/<dp_file_name>`.
pub fn dp_file(dir: &Path, resource_name: &str, device_id: &PciAddr) -> PathBuf {
    dir.join(dp_file_name(resource_name, device_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_shape_and_file_name() {
        let a: PciAddr = "0000:18:00.1".parse().unwrap();
        let pf: PciAddr = "0000:18:00.0".parse().unwrap();
        let info = DeviceInfo::pci(a, Some("mlx5_12"), Some(pf));
        let v: serde_json::Value = serde_json::to_value(&info).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"pci","version":"1.1.0","pci":{"pci-address":"0000:18:00.1","rdma-device":"mlx5_12","pf-pci-address":"0000:18:00.0"}})
        );
        assert_eq!(
            dp_file_name("nvidia.com/dgx_h200_vfs", &a),
            "nvidia.com-dgx_h200_vfs-0000:18:00.1-device.json"
        );
    }
}
