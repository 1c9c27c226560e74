//! `railvf-device-plugin serve`: the daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use railvf_host::HostRoot;
use railvf_host::devinfo::DP_DEVINFO_DIR;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::kubelet::{ResourceTask, watch_dir};
use crate::pool::{Monitor, Node, ScanError};
use crate::service::{DevinfoFiles, ResourceCtx};

/// Why the daemon cannot start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    HostRoot(#[from] railvf_host::HostError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("--log-level {0:?}: {1}")]
    LogLevel(String, String),
    #[error("cannot set up logging: {0}")]
    Logging(String),
    #[error("cannot create {what} {}: {error}", path.display())]
    Dir {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        error: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |error| ServeError::Io { what, error }
}

/// kubelet's device plugin directory, below the host root unless `--kubelet-dir` is given.
pub const KUBELET_DIR: &str = "var/lib/kubelet/device-plugins";

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory holding the host's /sys and /dev (the node's / in a DaemonSet mount).
    #[arg(long, env = "RAILVF_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// sriov-network-device-plugin style config.json. Without it (and with no file at the
    /// default path) the plugin advertises nvidia.com/dgx_h200_vfs: every RDMA VF of a
    /// compute PF.
    #[arg(long, env = "RAILVF_CONFIG")]
    pub config: Option<PathBuf>,
    /// kubelet's device plugin socket directory [default: <host root>/var/lib/kubelet/device-plugins].
    #[arg(long, env = "RAILVF_KUBELET_DIR")]
    pub kubelet_dir: Option<PathBuf>,
    /// Where NPWG device-info files go [default: <host root>/var/run/k8s.cni.cncf.io/devinfo/dp].
    #[arg(long, env = "RAILVF_DEVINFO_DIR")]
    pub devinfo_dir: Option<PathBuf>,
    /// How often VF health is read from sysfs, in milliseconds (sysfs has no change events).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub health_interval_ms: u64,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, env = "RAILVF_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

impl ServeArgs {
    pub fn kubelet_dir(&self, root: &HostRoot) -> PathBuf {
        self.kubelet_dir
            .clone()
            .unwrap_or_else(|| root.join(KUBELET_DIR))
    }

    pub fn devinfo_dir(&self, root: &HostRoot) -> PathBuf {
        self.devinfo_dir
            .clone()
            .unwrap_or_else(|| root.join(DP_DEVINFO_DIR))
    }
}

/// Reads the config: `--config` must exist; the default path may be absent.
pub fn load_config(args: &ServeArgs) -> Result<(Config, String), ConfigError> {
    match &args.config {
        Some(p) => Ok((Config::load(p)?, p.display().to_string())),
        None => match Config::load_if_present(std::path::Path::new(DEFAULT_CONFIG_PATH))? {
            Some(c) => Ok((c, DEFAULT_CONFIG_PATH.to_string())),
            None => Ok((
                Config::default_config(),
                format!("built-in default ({DEFAULT_CONFIG_PATH} does not exist)"),
            )),
        },
    }
}

/// Sets up logging on stderr.
pub fn init_logging(args: &ServeArgs) -> Result<(), ServeError> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| ServeError::LogLevel(args.log_level.clone(), e.to_string()))?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let r = if args.log_json {
        b.json().try_init()
    } else {
        b.try_init()
    };
    r.map_err(|e| ServeError::Logging(e.to_string()))
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    let started = Instant::now();
    init_logging(&args)?;
    let root = HostRoot::new(&args.host_root)?;
    let (config, origin) = load_config(&args)?;
    for w in &config.ignored {
        tracing::warn!("config: {w}");
    }
    let kubelet_dir = args.kubelet_dir(&root);
    let devinfo_dir = args.devinfo_dir(&root);
    std::fs::create_dir_all(&devinfo_dir).map_err(|error| ServeError::Dir {
        what: "the device-info directory",
        path: devinfo_dir.clone(),
        error,
    })?;
    std::fs::create_dir_all(&kubelet_dir).map_err(|error| ServeError::Dir {
        what: "the kubelet socket directory",
        path: kubelet_dir.clone(),
        error,
    })?;

    let fd_limit = crate::health::raise_fd_limit();
    let node = Node::scan(&root, config.rail_map.as_ref())?;
    if (fd_limit as usize) < node.vfs.len() + 256 {
        tracing::warn!(
            fd_limit,
            vfs = node.vfs.len(),
            "the open-file limit is below one descriptor per VF: health polls fall back to slower path lookups"
        );
    }
    let (monitor, receivers) = Monitor::new(node, &config);
    for (name, why) in monitor.empty_resources() {
        tracing::warn!(resource = %name, "the resource selects no VF on this node: {why}");
    }
    for (r, rx) in config.resources.iter().zip(&receivers) {
        let set = rx.borrow();
        let healthy = set
            .devices
            .values()
            .filter(|d| d.health.is_healthy())
            .count();
        tracing::info!(
            resource = %r.full_name(),
            devices = set.devices.len(),
            healthy,
            config = %origin,
            "resource ready"
        );
    }
    let (poll_stop_tx, poll_stop_rx) = std_mpsc::channel::<()>();
    let interval = Duration::from_millis(args.health_interval_ms);
    let poller = std::thread::Builder::new()
        .name("railvf-health".into())
        .spawn(move || monitor.run(interval, poll_stop_rx))
        .map_err(io("cannot start the health poller"))?;

    // One thread serves every resource: the work per call is small, and the poller has
    // its own thread so blocking sysfs reads never delay a gRPC answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime"))?;
    let devinfo_files = Arc::new(DevinfoFiles::default());
    let result = rt.block_on(async {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (events_tx, events_rx) = watch::channel(0u64);
        let watcher = tokio::spawn(watch_dir(
            kubelet_dir.clone(),
            events_tx,
            shutdown_rx.clone(),
        ));
        let (reg_tx, mut reg_rx) = watch::channel(0u64);
        let mut tasks = Vec::new();
        for ((r, rx), socket) in config
            .resources
            .iter()
            .zip(receivers)
            .zip(config.socket_names())
        {
            let ctx = Arc::new(ResourceCtx {
                full_name: r.full_name(),
                exclude_topology: r.exclude_topology,
                devices: rx,
                root: root.clone(),
                devinfo_dir: devinfo_dir.clone(),
                devinfo_files: devinfo_files.clone(),
            });
            tasks.push(tokio::spawn(
                ResourceTask {
                    dir: kubelet_dir.clone(),
                    socket,
                    ctx,
                    events: events_rx.clone(),
                    shutdown: shutdown_rx.clone(),
                    registered: Some(reg_tx.clone()),
                }
                .run(),
            ));
        }
        let n = config.resources.len() as u64;
        let first_registration = async move {
            let _ = reg_rx.wait_for(|c| *c >= n).await;
            tracing::info!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "every resource registered with kubelet"
            );
        };
        let signal = wait_for_signal();
        tokio::pin!(signal);
        tokio::select! {
            r = &mut signal => { r?; }
            _ = first_registration => {
                (&mut signal).await?;
            }
        }
        tracing::info!("stopping: unregistering sockets and removing device-info files");
        let _ = shutdown_tx.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        let _ = watcher.await;
        Ok::<(), ServeError>(())
    });
    let removed = devinfo_files.remove_all();
    tracing::info!(removed, "device-info files removed");
    drop(poll_stop_tx);
    let _ = poller.join();
    result
}

async fn wait_for_signal() -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}
