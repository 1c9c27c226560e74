//! `railvf-sim demo`: the whole job on a simulated DGX H200 node, with the real binaries.
//!
//! It builds the node (subnet manager included), runs `railvf-device-plugin inspect`, starts
//! `railvf-device-plugin serve` against a kubelet stand-in, asks for 8 VFs the way kubelet
//! does (GetPreferredAllocation, then Allocate), attaches each with the real `railvf` binary
//! exactly as Multus calls it, shows what the pod got, and tears everything down — also on
//! Ctrl-C. `--fault` breaks rail 3's PF so the refusal path can be seen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use railvf_proto::fake_kubelet::FakeKubelet;
use railvf_proto::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty,
    PreferredAllocationRequest,
};
use railvf_sim::{Fault, SimNode, SimOptions, TestNetns};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The resource the device plugin advertises by default.
const RESOURCE: &str = "nvidia.com/dgx_h200_vfs";
/// Rail 3's PF (mlx5_5): where `--fault` strikes.
const FAULTY_PF: &str = "0000:5e:00.0";

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DemoFault {
    /// The subnet manager never assigns rail 3's VFs a LID.
    LidZero,
    /// Rail 3's port is DOWN.
    PortDown,
    /// Rail 3's port fell back to Ethernet.
    EthFallback,
    /// systemd-networkd manages rail 3's VF netdevs.
    HostManaged,
}

impl DemoFault {
    fn fault(self) -> Fault {
        match self {
            DemoFault::LidZero => Fault::LidZero,
            DemoFault::PortDown => Fault::PortDown,
            DemoFault::EthFallback => Fault::EthFallback,
            DemoFault::HostManaged => Fault::HostManaged,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Break rail 3 (PF 0000:5e:00.0) to see railvf refuse its VF.
    #[arg(long, value_enum)]
    fault: Option<DemoFault>,
    /// VFs the pod asks for.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    vfs: u32,
    /// Readiness timeout given to the CNI (`readiness.timeoutMs`).
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Subnet-manager delay between a GUID write and its LID.
    #[arg(long, default_value_t = 300)]
    lid_delay_ms: u64,
    /// Directory holding `railvf` and `railvf-device-plugin` (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The `railvf` CNI binary to run (default: the one in the binary directory);
    /// scripts/demo.sh passes the build that ships (scripts/build-cni.sh).
    #[arg(long)]
    cni_bin: Option<PathBuf>,
}

pub fn exec(args: DemoArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces and veth links: run it as root");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program has no directory")?
            .to_path_buf(),
    };
    let cni = args
        .cni_bin
        .clone()
        .unwrap_or_else(|| bin_dir.join("railvf"));
    for b in [cni.clone(), bin_dir.join("railvf-device-plugin")] {
        if !b.is_file() {
            bail!(
                "{} is missing: build it first (cargo build --release -p railvf-cni -p railvf-device-plugin, or scripts/build-cni.sh for the CNI binary that ships)",
                b.display()
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args, bin_dir, cni))
}

/// Everything the demo created, torn down in order by [`Demo::teardown`].
struct Demo {
    sim: SimNode,
    bins: PathBuf,
    /// The `railvf` binary.
    cni: PathBuf,
    work: tempfile::TempDir,
    plugin: Option<Child>,
    pod: Option<TestNetns>,
    /// ifname → VF of attachments ADD was called for.
    attached: BTreeMap<String, String>,
    container_id: String,
}

async fn run(args: DemoArgs, bins: PathBuf, cni: PathBuf) -> Result<ExitCode> {
    let started = Instant::now();
    let opts = SimOptions::dgx_h200()
        .real_names()
        .lid_delay(Duration::from_millis(args.lid_delay_ms));
    let sim = opts
        .build()
        .context("building the simulated DGX H200 node")?;
    let mut demo = Demo {
        sim,
        bins,
        cni,
        work: tempfile::Builder::new().prefix("railvf-demo-").tempdir()?,
        plugin: None,
        pod: None,
        attached: BTreeMap::new(),
        container_id: format!("railvf-demo-{}", std::process::id()),
    };
    let outcome = tokio::select! {
        r = demo.main_flow(&args) => r,
        _ = shutdown_signal() => {
            println!("\ninterrupted: tearing down");
            Ok(false)
        }
    };
    let clean = demo.teardown().await;
    println!("== done in {:.1} s", started.elapsed().as_secs_f64());
    match (outcome, clean) {
        (Ok(_), Ok(())) => Ok(ExitCode::SUCCESS),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.context("teardown left something behind")),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

impl Demo {
    async fn main_flow(&mut self, args: &DemoArgs) -> Result<bool> {
        let root = self.sim.root().to_path_buf();
        println!("== simulated DGX H200 node at {}", root.display());
        println!("   railvf CNI binary: {}", self.cni.display());

        println!("\n== inventory: railvf-device-plugin inspect");
        let out = Command::new(self.bins.join("railvf-device-plugin"))
            .arg("inspect")
            .arg("--host-root")
            .arg(&root)
            .output()
            .await?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));

        println!("\n== device plugin: serve, register with the kubelet stand-in");
        let kubelet_dir = self.work.path().join("device-plugins");
        let devinfo_dir = self.work.path().join("devinfo");
        let mut kubelet = FakeKubelet::start(&kubelet_dir).await?;
        let log = std::fs::File::create(self.work.path().join("device-plugin.log"))?;
        self.plugin = Some(
            Command::new(self.bins.join("railvf-device-plugin"))
                .arg("serve")
                .arg("--host-root")
                .arg(&root)
                .arg("--kubelet-dir")
                .arg(&kubelet_dir)
                .arg("--devinfo-dir")
                .arg(&devinfo_dir)
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting railvf-device-plugin")?,
        );
        let t0 = Instant::now();
        let Some(reg) = kubelet.next_registration(Duration::from_secs(10)).await else {
            bail!(
                "the device plugin did not register within 10 s; its log: {}",
                self.work.path().join("device-plugin.log").display()
            );
        };
        println!(
            "   registered {} (API {}) after {} ms, endpoint {}",
            reg.request.resource_name,
            reg.request.version,
            t0.elapsed().as_millis(),
            reg.request.endpoint
        );
        let mut client = reg.client;
        let mut stream = client.list_and_watch(Empty {}).await?.into_inner();
        let devices = stream
            .message()
            .await?
            .context("ListAndWatch ended before listing devices")?
            .devices;
        let healthy: Vec<String> = devices
            .iter()
            .filter(|d| d.health == railvf_proto::HEALTHY)
            .map(|d| d.id.clone())
            .collect();
        println!(
            "   {} devices advertised, {} healthy",
            devices.len(),
            healthy.len()
        );

        println!(
            "\n== pod requests {RESOURCE}: {} — GetPreferredAllocation, Allocate",
            args.vfs
        );
        let preferred = client
            .get_preferred_allocation(PreferredAllocationRequest {
                container_requests: vec![ContainerPreferredAllocationRequest {
                    available_device_i_ds: healthy.clone(),
                    must_include_device_i_ds: vec![],
                    allocation_size: args.vfs as i32,
                }],
            })
            .await?
            .into_inner();
        let chosen = preferred
            .container_responses
            .first()
            .map(|r| r.device_i_ds.clone())
            .unwrap_or_default();
        if chosen.len() != args.vfs as usize {
            bail!(
                "preferred allocation returned {} VFs: {chosen:?}",
                chosen.len()
            );
        }
        let alloc = client
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: chosen.clone(),
                }],
            })
            .await?
            .into_inner();
        let resp = alloc
            .container_responses
            .first()
            .context("Allocate answered no container")?;
        println!(
            "   {:<13} {:<4} {:<4} {:<13} {:<8}",
            "VF", "RAIL", "NUMA", "GPU", "RDMA"
        );
        let gpus = &self.sim.topology().gpus;
        for vf in &chosen {
            let info = self.sim.vf(vf)?;
            let gpu = info
                .rail
                .and_then(|r| gpus.iter().find(|g| g.index == r))
                .map(|g| g.pci.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "   {:<13} {:<4} {:<4} {:<13} {:<8}",
                vf,
                info.rail.map_or("-".into(), |r| r.to_string()),
                info.numa,
                gpu,
                info.rdma_device
            );
        }
        let mut envs: Vec<_> = resp.envs.iter().collect();
        envs.sort();
        for (k, v) in envs {
            println!("   env {k}={v}");
        }
        println!(
            "   device specs: {}",
            resp.devices
                .iter()
                .map(|d| d.container_path.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );

        if let Some(f) = args.fault {
            // After allocation, as in the field: kubelet already handed the VF to the pod
            // when the port, the SM or the host manager went wrong.
            self.sim.inject_fault(FAULTY_PF, f.fault())?;
            println!(
                "\n== fault: {} on rail 3's PF {FAULTY_PF} and its VFs, after allocation",
                f.fault().name()
            );
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Ok(Some(update))) => println!(
                    "   device plugin ListAndWatch update: {} of {} devices Unhealthy",
                    update
                        .devices
                        .iter()
                        .filter(|d| d.health != railvf_proto::HEALTHY)
                        .count(),
                    update.devices.len()
                ),
                _ => println!(
                    "   device plugin: health unchanged ({} is not a health check)",
                    f.fault().name()
                ),
            }
        }

        println!("\n== attach: railvf ADD for each VF, as Multus calls it");
        let pod = TestNetns::new()?;
        println!("   pod network namespace {}", pod.path().display());
        let netns = pod.path().to_path_buf();
        self.pod = Some(pod);
        let mut ready = 0;
        let mut refused = 0;
        for (i, vf) in chosen.iter().enumerate() {
            let ifname = format!("net{}", i + 1);
            let rail = self.sim.vf(vf)?.rail.unwrap_or(0);
            // A per-pod GUID, as Multus passes it from the pod's runtimeConfig: the subnet
            // manager must then hand out a LID before the VF is ready.
            let guid = format!("02:00:00:00:00:{:02x}:{:02x}:01", rail, i + 1);
            let conf = json!({
                "cniVersion": "1.1.0",
                "name": "railvf",
                "type": "railvf",
                "deviceID": vf,
                "readiness": {"timeoutMs": args.timeout_ms},
                "runtimeConfig": {"infinibandGUID": guid},
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("10.56.{rail}.0/24")}]],
                    "dataDir": self.work.path().join("ipam"),
                },
            });
            self.attached.insert(ifname.clone(), vf.clone());
            let t = Instant::now();
            let (ok, out) = self.cni("ADD", &ifname, &netns, &conf).await?;
            let ms = t.elapsed().as_millis();
            let info = self.sim.vf(vf)?;
            if ok {
                ready += 1;
                let addr = out["ips"][0]["address"].as_str().unwrap_or("-");
                println!(
                    "   {ifname} {vf} rail {rail}: {addr:<16} GUID {} LID {:#x} RDMA-ready in {ms} ms",
                    railvf_sim::guid_colon(info.port_guid),
                    info.lid
                );
            } else {
                refused += 1;
                println!(
                    "   {ifname} {vf} rail {rail}: REFUSED after {ms} ms (CNI code {}): {}",
                    out["code"],
                    out["msg"].as_str().unwrap_or("")
                );
            }
        }
        let inside = pod_view(&netns).await;
        println!("\n== inside the pod (ip -br addr):\n{inside}");
        println!(
            "== {ready} of {} VFs attached RDMA-ready, {refused} refused",
            chosen.len()
        );
        Ok(refused == 0)
    }

    /// Runs `railvf` with the CNI environment Multus gives it.
    async fn cni(
        &self,
        verb: &str,
        ifname: &str,
        netns: &Path,
        conf: &Value,
    ) -> Result<(bool, Value)> {
        use tokio::io::AsyncWriteExt;
        let mut child = Command::new(&self.cni)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/usr/lib/cni:/opt/cni/bin")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=train-0",
            )
            .env("RAILVF_HOST_ROOT", self.sim.root())
            .env("RAILVF_STATE_DIR", self.work.path().join("state"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running railvf")?;
        let mut stdin = child.stdin.take().context("railvf stdin")?;
        stdin.write_all(conf.to_string().as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        let parsed = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "railvf {verb} printed no JSON: {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })?
        };
        Ok((out.status.success(), parsed))
    }

    /// DEL every attachment, stop the plugin, drop the pod netns and the node; then check
    /// that nothing is left behind.
    async fn teardown(&mut self) -> Result<()> {
        println!("\n== teardown");
        let mut problems = Vec::new();
        let netns = self.pod.as_ref().map(|p| p.path().to_path_buf());
        let attached = std::mem::take(&mut self.attached);
        for (ifname, vf) in attached.iter().rev() {
            let conf = json!({
                "cniVersion": "1.1.0", "name": "railvf", "type": "railvf", "deviceID": vf,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.56.0.0/16"}]],
                         "dataDir": self.work.path().join("ipam")},
            });
            let ns = netns.clone().unwrap_or_default();
            match self.cni("DEL", ifname, &ns, &conf).await {
                Ok((true, _)) => {}
                Ok((false, e)) => problems.push(format!("DEL {ifname} ({vf}): {e}")),
                Err(e) => problems.push(format!("DEL {ifname} ({vf}): {e:#}")),
            }
        }
        let _ = self.sim.sync();
        for vf in attached.values() {
            match self.sim.vf(vf) {
                Ok(info) => match &info.host_netdev {
                    Some(n) if n.name == info.netdev => {
                        println!("   {vf} back on the host as {}", n.name)
                    }
                    other => problems.push(format!(
                        "{vf} is not back on the host as {} (found {other:?})",
                        info.netdev
                    )),
                },
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(mut plugin) = self.plugin.take() {
            if let Some(pid) = plugin.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            match tokio::time::timeout(Duration::from_secs(5), plugin.wait()).await {
                Ok(_) => println!("   device plugin stopped"),
                Err(_) => {
                    let _ = plugin.kill().await;
                    problems.push("the device plugin ignored SIGTERM for 5 s".into());
                }
            }
        }
        let devinfo = self.work.path().join("devinfo");
        if let Ok(rd) = std::fs::read_dir(&devinfo) {
            let left: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
            if !left.is_empty() {
                problems.push(format!("device-info files left: {left:?}"));
            }
        }
        let state = self.work.path().join("state");
        if let Ok(rd) = std::fs::read_dir(&state) {
            let left: Vec<_> = rd
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().ends_with(".json"))
                .collect();
            if !left.is_empty() {
                problems.push(format!("state files left: {left:?}"));
            }
        }
        if let Some(pod) = self.pod.take() {
            let name = pod.name().to_string();
            drop(pod);
            println!("   pod network namespace {name} deleted");
        }
        if problems.is_empty() {
            println!("   nothing left behind");
            Ok(())
        } else {
            for p in &problems {
                println!("   PROBLEM: {p}");
            }
            bail!("{}", problems.join("; "))
        }
    }
}

async fn pod_view(netns: &Path) -> String {
    let name = netns
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match Command::new("ip")
        .args(["-n", &name, "-br", "addr"])
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| format!("   {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("   (ip failed: {e})"),
    }
}
