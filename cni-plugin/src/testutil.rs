//! Root-free test bench for the verbs: a minimal sysfs tree (one ConnectX-7 PF with VFs, in
//! the kernel's formats) under a temporary host root, [`FakeLinks`] holding the matching
//! netdevs, a fake pod netns, and a state dir. The simulator (`railvf-sim`) is the real
//! thing for the root-only tests in `tests/`; this keeps unit tests millisecond-fast.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use railvf_host::PciAddr;
use tempfile::TempDir;

use crate::Ctx;
use crate::env::Env;
use crate::error::CniError;
use crate::net::fake::FakeLinks;
use crate::net::{IpNet, KernelRoute, Link, LinkOps, NetError, Netns, RouteAttrs, VfSettings};
use crate::netconf::NetConf;
use railvf_host::Guid;
use std::net::{IpAddr, Ipv4Addr};

/// Unit tests run verbs on many threads of one process, and a child process holds a copy
/// of every descriptor of its parent from fork until exec (`O_CLOEXEC` closes them only at
/// exec). Two things go wrong in that window: a GC's `try_lock` takes a VF another test
/// just released for one in use (a copy of its lock descriptor is still open), and a
/// script another test is writing cannot be run (`ETXTBSY`: a copy of its write
/// descriptor is still open). Spawns hold this for reading; `try_lock` and script writes
/// for writing. The binary runs one verb per process: no such window.
pub static SPAWN_GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Writes an executable `#!/bin/sh` script, with no spawn in flight (see [`SPAWN_GATE`]).
pub fn write_script(path: &Path, body: &str) {
    let _gate = SPAWN_GATE.write().unwrap_or_else(|e| e.into_inner());
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

pub const PF: &str = "0000:18:00.0";
pub const PF_NETDEV: &str = "ibp24s0";

pub fn vf_addr(i: u32) -> PciAddr {
    format!("0000:18:00.{}", i + 1).parse().unwrap()
}

pub fn vf_netdev(i: u32) -> String {
    format!("ibp24s0f{}", i + 1)
}

/// VF `i`'s RDMA device.
pub fn ibdev(i: u32) -> String {
    format!("mlx5_{}", 12 + i)
}

pub struct Bench {
    pub dir: TempDir,
    pub links: FakeLinks,
    pub pf_ifindex: u32,
    pub vf_ifindex: Vec<u32>,
    /// Each VF netdev's MAC when the bench was made.
    pub vf_mac: Vec<String>,
    pub pod: PathBuf,
    pub cni_path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn w(p: &Path, s: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, s).unwrap();
}

impl Bench {
    /// A PF with `n` VFs, all healthy (GUID set, LID assigned, port active), OFED GUID files.
    pub fn new(n: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let devs = root.join("sys/bus/pci/devices");
        let drv = root.join("sys/bus/pci/drivers/mlx5_core");
        fs::create_dir_all(&drv).unwrap();
        w(&drv.join("bind"), "");
        w(&drv.join("unbind"), "");
        let links = FakeLinks::new();
        let pf_ifindex = links.add_pf(PF_NETDEV, n);
        let pf = devs.join(PF);
        w(&pf.join("vendor"), "0x15b3\n");
        w(&pf.join("device"), "0x1021\n");
        w(&pf.join("class"), "0x020700\n");
        w(&pf.join("numa_node"), "0\n");
        w(&pf.join("sriov_numvfs"), &format!("{n}\n"));
        w(
            &pf.join("net").join(PF_NETDEV).join("ifindex"),
            &format!("{pf_ifindex}\n"),
        );
        symlink("../../drivers/mlx5_core", pf.join("driver")).unwrap();
        let mut vf_ifindex = Vec::new();
        let mut vf_mac = Vec::new();
        for i in 0..n {
            let a = vf_addr(i);
            let d = devs.join(a.to_string());
            w(&d.join("vendor"), "0x15b3\n");
            w(&d.join("device"), "0x101e\n");
            w(&d.join("class"), "0x020700\n");
            w(&d.join("numa_node"), "0\n");
            symlink("../../drivers/mlx5_core", d.join("driver")).unwrap();
            symlink(format!("../{PF}"), d.join("physfn")).unwrap();
            symlink(format!("../{a}"), pf.join(format!("virtfn{i}"))).unwrap();
            let idx = links.add_link(&Netns::Host, &vf_netdev(i));
            vf_ifindex.push(idx);
            links.set_device(&Netns::Host, idx, &a.to_string());
            let l = links
                .link_by_name(&Netns::Host, &vf_netdev(i))
                .unwrap()
                .unwrap();
            vf_mac.push(l.mac);
            w(
                &d.join("net").join(vf_netdev(i)).join("ifindex"),
                &format!("{idx}\n"),
            );
            let guid = format!("0c:42:a1:ff:00:18:01:{:02x}", i + 1);
            let sriov = pf.join("sriov").join(i.to_string());
            w(&sriov.join("node"), &format!("{guid}\n"));
            w(&sriov.join("port"), &format!("{guid}\n"));
            w(&sriov.join("policy"), "Follow\n");
            let ib = d.join("infiniband").join(format!("mlx5_{}", 12 + i));
            w(
                &ib.join("node_guid"),
                &format!("0c42:a1ff:0018:01{:02x}\n", i + 1),
            );
            let p = ib.join("ports/1");
            w(&p.join("state"), "4: ACTIVE\n");
            w(&p.join("phys_state"), "5: LinkUp\n");
            w(&p.join("lid"), &format!("{:#x}\n", 0x20 + i));
            w(&p.join("sm_lid"), "0x1\n");
            w(&p.join("link_layer"), "InfiniBand\n");
            w(&p.join("rate"), "400 Gb/sec (4X NDR)\n");
            w(
                &p.join("gids/0"),
                &format!("fe80:0000:0000:0000:0c42:a1ff:0018:01{:02x}\n", i + 1),
            );
            let class = root.join("sys/class/infiniband");
            fs::create_dir_all(&class).unwrap();
            symlink(
                format!("../../bus/pci/devices/{a}/infiniband/mlx5_{}", 12 + i),
                class.join(format!("mlx5_{}", 12 + i)),
            )
            .unwrap();
            links.add_rdma_device(&Netns::Host, &ibdev(i));
            // InfiniBand: the netdev is IPoIB's, re-created when the RDMA device moves.
            links.set_ipoib(&ibdev(i), &Netns::Host, idx);
        }
        let pod = dir.path().join("netns-pod");
        w(&pod, "");
        links.add_netns(&Netns::path(&pod));
        let cni_path = dir.path().join("cni");
        fs::create_dir_all(&cni_path).unwrap();
        Bench {
            dir,
            links,
            pf_ifindex,
            vf_ifindex,
            vf_mac,
            pod,
            cni_path,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Plays mlx5 for GUIDs: what is written to `sriov/<n>/node` becomes the RDMA device's
    /// `node_guid`, and `sriov/<n>/port` the port GUID in `gids/0`, when the VF's driver is
    /// bound again (a write to `bind` naming it), as on real hardware; not before.
    pub fn fake_driver(&self) {
        let stop = self.stop.clone();
        let bind = self.root().join("sys/bus/pci/drivers/mlx5_core/bind");
        // Per VF: its address, and each GUID file with where the driver shows it.
        type Shown = (PathBuf, PathBuf, &'static str);
        let vfs: Vec<(String, [Shown; 2])> = (0..self.vf_mac.len() as u32)
            .map(|i| {
                let files = [
                    (self.sriov_file(i, "node"), self.node_guid_file(i), ""),
                    (
                        self.sriov_file(i, "port"),
                        self.port_file(i, "gids/0"),
                        GID_PREFIX,
                    ),
                ];
                (vf_addr(i).to_string(), files)
            })
            .collect();
        std::thread::spawn(move || {
            let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
            while !stop.load(Ordering::Relaxed) {
                let named = fs::read_to_string(&bind).unwrap_or_default();
                let bound_at = mtime(&bind);
                for (addr, files) in &vfs {
                    // Bound (again) since the GUID was written: mtimes are coarse (a jiffy),
                    // so "not before" rather than "after".
                    if named.trim() != addr || bound_at < mtime(&files[0].0) {
                        continue;
                    }
                    for (written, shown, prefix) in files {
                        let Some(g) = fs::read_to_string(written)
                            .ok()
                            .and_then(|s| s.trim().parse::<Guid>().ok())
                        else {
                            continue;
                        };
                        // Only on change, and atomically: sysfs never shows a half value.
                        let want = format!("{prefix}{g}\n");
                        if fs::read_to_string(shown).ok().as_deref() != Some(want.as_str()) {
                            let tmp = shown.with_extension("tmp");
                            let _ = fs::write(&tmp, want);
                            let _ = fs::rename(&tmp, shown);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
    }

    pub fn node_guid_file(&self, i: u32) -> PathBuf {
        self.vf_dir(i)
            .join(format!("infiniband/mlx5_{}/node_guid", 12 + i))
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn vf_dir(&self, i: u32) -> PathBuf {
        self.root()
            .join("sys/bus/pci/devices")
            .join(vf_addr(i).to_string())
    }

    pub fn port_file(&self, i: u32, f: &str) -> PathBuf {
        self.vf_dir(i)
            .join(format!("infiniband/mlx5_{}/ports/1", 12 + i))
            .join(f)
    }

    pub fn set_port(&self, i: u32, f: &str, v: &str) {
        fs::write(self.port_file(i, f), format!("{v}\n")).unwrap();
    }

    pub fn sriov_file(&self, i: u32, f: &str) -> PathBuf {
        self.root()
            .join("sys/bus/pci/devices")
            .join(PF)
            .join("sriov")
            .join(i.to_string())
            .join(f)
    }

    /// Makes each VF's sysfs `net/` show where its netdev really is, as the kernel's
    /// per-netns sysfs does: its host name, or nothing while it is in another netns. The
    /// netdev is the one whose device is the VF (the fake keeps it across moves and IPoIB
    /// re-creations). Likewise `infiniband/` shows the RDMA device only while it is in the
    /// host netns (the kernel's `infiniband` class is netns-tagged).
    pub fn sync_sysfs(&self) {
        for i in 0..self.vf_mac.len() as u32 {
            let net = self.vf_dir(i).join("net");
            let _ = fs::remove_dir_all(&net);
            fs::create_dir_all(&net).unwrap();
            if let Some(l) = self
                .links
                .host_links_of_device(&vf_addr(i).to_string())
                .first()
            {
                w(
                    &net.join(&l.name).join("ifindex"),
                    &format!("{}\n", l.ifindex),
                );
            }
            let shown = self.vf_dir(i).join("infiniband");
            let away = self.dir.path().join("rdma-elsewhere").join(ibdev(i));
            let in_host = self
                .links
                .rdma_device_netns(&ibdev(i))
                .is_none_or(|ns| ns == Netns::Host);
            if !in_host && shown.exists() {
                fs::create_dir_all(away.parent().unwrap()).unwrap();
                fs::rename(&shown, &away).unwrap();
            } else if in_host && away.exists() {
                fs::rename(&away, &shown).unwrap();
            }
        }
    }

    /// Has systemd-networkd manage VF `i`'s netdev, as its per-link state file says.
    pub fn networkd_manages(&self, i: u32) {
        let links = self.root().join("run/systemd/netif/links");
        fs::create_dir_all(&links).unwrap();
        fs::write(
            links.join(self.vf_ifindex[i as usize].to_string()),
            "ADMIN_STATE=configured\n",
        )
        .unwrap();
    }

    /// Makes VF `i` a RoCE VF: Ethernet link layer, a netdev that is no IPoIB one.
    pub fn roce(&self, i: u32) {
        self.set_port(i, "link_layer", "Ethernet");
        self.links.forget_ipoib(&ibdev(i));
    }

    /// A second pod netns.
    pub fn netns(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        w(&p, "");
        self.links.add_netns(&Netns::path(&p));
        p
    }

    /// Deletes a pod netns as the kernel would.
    pub fn delete_netns(&self, p: &Path) {
        self.links.remove_netns(&Netns::path(p));
        fs::remove_file(p).unwrap();
        self.sync_sysfs();
    }

    /// An executable IPAM stand-in in the bench's CNI_PATH.
    pub fn ipam_script(&self, name: &str, body: &str) {
        write_script(&self.cni_path.join(name), body);
    }

    pub fn env(&self, command: &str, cid: &str, ifname: &str, netns: Option<&Path>) -> Env {
        let mut m: HashMap<&str, OsString> = HashMap::new();
        m.insert("CNI_COMMAND", command.into());
        m.insert("CNI_CONTAINERID", cid.into());
        m.insert("CNI_IFNAME", ifname.into());
        if let Some(n) = netns {
            m.insert("CNI_NETNS", n.into());
        }
        m.insert("CNI_PATH", self.cni_path.clone().into());
        m.insert("RAILVF_HOST_ROOT", self.root().into());
        m.insert("RAILVF_STATE_DIR", self.state_dir().into());
        Env::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    /// Runs one verb with this bench's env (`pod` netns) and `conf`.
    pub fn run(
        &self,
        command: &str,
        cid: &str,
        netns: Option<&Path>,
        conf: &str,
    ) -> Result<Option<String>, CniError> {
        self.run_with(&Mirror(self), command, cid, "net1", netns, conf)
    }

    pub fn run_with(
        &self,
        links: &dyn LinkOps,
        command: &str,
        cid: &str,
        ifname: &str,
        netns: Option<&Path>,
        conf: &str,
    ) -> Result<Option<String>, CniError> {
        let env = self.env(command, cid, ifname, netns);
        // As the binary does: DEL goes on with a config this version refuses.
        let conf = if command == "DEL" {
            NetConf::parse_for_teardown(conf.as_bytes()).0
        } else {
            NetConf::parse(conf.as_bytes())?
        };
        let ctx = Ctx::new(&env, links);
        match command {
            "ADD" => crate::add::exec(&ctx, &conf).map(Some),
            "DEL" => crate::del::exec(&ctx, &conf).map(|()| None),
            "CHECK" => crate::check::exec(&ctx, &conf).map(|()| None),
            "GC" => crate::gc::exec(&ctx, &conf).map(|()| None),
            "STATUS" => crate::status::exec(&ctx, &conf).map(|()| None),
            other => panic!("verb {other}"),
        }
    }

    /// State files left.
    pub fn state_files(&self) -> Vec<String> {
        match fs::read_dir(self.state_dir()) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Where the link called `name` is.
    pub fn whereis(&self, name: &str) -> Vec<Netns> {
        self.links
            .find(name)
            .into_iter()
            .map(|(ns, _)| ns)
            .collect()
    }
}

/// GID 0 of an InfiniBand port: the link-local prefix, then the port GUID.
const GID_PREFIX: &str = "fe80:0000:0000:0000:";

/// A network config for VF `i` with extra JSON members (`"ipam": …` etc.).
pub fn conf(i: u32, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(
        r#"{{"cniVersion":"1.1.0","name":"rdma-net","type":"railvf","deviceID":"{}"{sep}{extra}}}"#,
        vf_addr(i)
    )
}

/// [`FakeLinks`] plus the kernel's sysfs behaviour: after every change the VFs' `net/`
/// entries follow their netdevs (the simulator's mirror does the same with real veths).
pub struct Mirror<'a>(pub &'a Bench);

impl Mirror<'_> {
    fn after<T>(&self, r: Result<T, NetError>) -> Result<T, NetError> {
        self.0.sync_sysfs();
        r
    }
}

impl LinkOps for Mirror<'_> {
    fn link_by_name(&self, ns: &Netns, name: &str) -> Result<Option<Link>, NetError> {
        self.0.links.link_by_name(ns, name)
    }
    fn link_by_index(&self, ns: &Netns, ifindex: u32) -> Result<Option<Link>, NetError> {
        self.0.links.link_by_index(ns, ifindex)
    }
    fn links_of_device(&self, ns: &Netns, device: &str) -> Result<Vec<Link>, NetError> {
        self.0.links.links_of_device(ns, device)
    }
    fn move_link(
        &self,
        from: &Netns,
        ifindex: u32,
        to: &Netns,
        new_name: &str,
    ) -> Result<Link, NetError> {
        self.after(self.0.links.move_link(from, ifindex, to, new_name))
    }
    fn rename(&self, ns: &Netns, ifindex: u32, name: &str) -> Result<(), NetError> {
        self.after(self.0.links.rename(ns, ifindex, name))
    }
    fn set_mtu(&self, ns: &Netns, ifindex: u32, mtu: u32) -> Result<(), NetError> {
        self.0.links.set_mtu(ns, ifindex, mtu)
    }
    fn set_mac(&self, ns: &Netns, ifindex: u32, mac: [u8; 6]) -> Result<(), NetError> {
        self.0.links.set_mac(ns, ifindex, mac)
    }
    fn set_up(&self, ns: &Netns, ifindex: u32, up: bool) -> Result<(), NetError> {
        self.0.links.set_up(ns, ifindex, up)
    }
    fn add_address(&self, ns: &Netns, ifindex: u32, addr: IpNet) -> Result<(), NetError> {
        self.0.links.add_address(ns, ifindex, addr)
    }
    fn enable_address_notify(&self, ns: &Netns, ifname: &str) -> Result<(), NetError> {
        self.0.links.enable_address_notify(ns, ifname)
    }
    fn announce_ipv4(&self, ns: &Netns, ifindex: u32, addr: Ipv4Addr) -> Result<(), NetError> {
        self.0.links.announce_ipv4(ns, ifindex, addr)
    }
    fn addresses(&self, ns: &Netns, ifindex: u32) -> Result<Vec<IpNet>, NetError> {
        self.0.links.addresses(ns, ifindex)
    }
    fn list_routes(&self, ns: &Netns) -> Result<Vec<KernelRoute>, NetError> {
        self.0.links.list_routes(ns)
    }
    fn add_route_with(
        &self,
        ns: &Netns,
        ifindex: u32,
        dst: IpNet,
        gw: Option<IpAddr>,
        attrs: &RouteAttrs,
    ) -> Result<(), NetError> {
        self.0.links.add_route_with(ns, ifindex, dst, gw, attrs)
    }
    fn vf_settings(&self, pf_ifindex: u32, vf: u32) -> Result<VfSettings, NetError> {
        self.0.links.vf_settings(pf_ifindex, vf)
    }
    fn set_vf(&self, pf_ifindex: u32, vf: u32, settings: &VfSettings) -> Result<(), NetError> {
        self.0.links.set_vf(pf_ifindex, vf, settings)
    }
    fn set_vf_guids(
        &self,
        pf_ifindex: u32,
        vf: u32,
        node: Guid,
        port: Guid,
    ) -> Result<(), NetError> {
        let r = self.0.links.set_vf_guids(pf_ifindex, vf, node, port);
        if r.is_ok() {
            fs::write(self.0.node_guid_file(vf), format!("{node}\n")).unwrap();
            fs::write(
                self.0.port_file(vf, "gids/0"),
                format!("{GID_PREFIX}{port}\n"),
            )
            .unwrap();
        }
        r
    }
    fn move_rdma_device(&self, ibdev: &str, from: &Netns, to: &Netns) -> Result<(), NetError> {
        self.after(self.0.links.move_rdma_device(ibdev, from, to))
    }
    fn rdma_port1(
        &self,
        ns: &Netns,
        ibdev: &str,
    ) -> Result<Option<crate::net::rdma::PortView>, NetError> {
        self.0.links.rdma_port1(ns, ibdev)
    }
}
