//! `railvf-device-plugin serve`: the daemon.
//!
//! Threads: the health poller owns the node (blocking sysfs reads); one async thread
//! serves every resource's gRPC socket, registers with kubelet, serves `/metrics` and
//! `/healthz`, reads the CNI's rail events and reloads the config when it changes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use railvf_host::HostRoot;
use railvf_host::devinfo::DP_DEVINFO_DIR;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::cdi::{CDI_DIR, CdiSpec, KindError};
use crate::config::{Config, ConfigError, ResourceConfig};
use crate::devinfo::{DevinfoFiles, DevinfoSync};
use crate::events::EVENTS_DIR;
use crate::kubelet::{ResourceTask, watch_dir};
use crate::metrics::Metrics;
use crate::pool::{Monitor, MonitorCommand, Node, ResourceHandle, ScanError};
use crate::reload::{ConfigSource, Reload};
use crate::service::ResourceCtx;
use crate::status::StatusBoard;

/// Why the daemon cannot start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    HostRoot(#[from] railvf_host::HostError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    CdiKind(#[from] KindError),
    #[error("{0}")]
    SocketPath(String),
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
    #[error("--metrics-addr {addr}: cannot listen: {error}")]
    Metrics {
        addr: SocketAddr,
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
    /// Log format: json (one object per line), text, or auto (JSON unless stderr is a
    /// terminal).
    #[arg(long, env = "RAILVF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Same as --log-format json (kept for existing manifests).
    #[arg(long, hide = true)]
    pub log_json: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics and the probe endpoint /healthz
    /// (e.g. 127.0.0.1:9108, or $(POD_IP):9108 for a scraper). Off when not given.
    #[arg(long, env = "RAILVF_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Where the CNI drops rail-alignment events [default: <host root>/run/railvf/rail-events].
    #[arg(long, env = "RAILVF_EVENTS_DIR")]
    pub events_dir: Option<PathBuf>,
    /// Answer Allocate with CDI device names and keep a CDI spec per resource in --cdi-dir,
    /// so that a container kubelet re-creates from its checkpoint (after a reboot) gets its
    /// VFs' uverbs nodes as they are then. Needs kubelet 1.28+ (CDI devices in the device
    /// plugin API; on by default from 1.29) and a runtime with CDI on (containerd 1.7+ with
    /// enable_cdi, CRI-O).
    #[arg(long)]
    pub use_cdi: bool,
    /// Where the CDI specs go, with --use-cdi [default: <host root>/var/run/cdi].
    #[arg(long, env = "RAILVF_CDI_DIR")]
    pub cdi_dir: Option<PathBuf>,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
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

    pub fn events_dir(&self, root: &HostRoot) -> PathBuf {
        self.events_dir
            .clone()
            .unwrap_or_else(|| root.join(EVENTS_DIR))
    }

    /// The CDI spec directory, with `--use-cdi` only.
    pub fn cdi_dir(&self, root: &HostRoot) -> Option<PathBuf> {
        self.use_cdi
            .then(|| self.cdi_dir.clone().unwrap_or_else(|| root.join(CDI_DIR)))
    }
}

/// With `--use-cdi`, every resource's full name must be a CDI kind: checked before a
/// config is served, at start and at every reload.
fn check_cdi_kinds(config: &Config, cdi: bool) -> Result<BTreeSet<String>, KindError> {
    if !cdi {
        return Ok(BTreeSet::new());
    }
    config
        .resources
        .iter()
        .map(|r| crate::cdi::kind_of(&r.full_name()))
        .collect()
}

/// The longest path a unix socket can be bound at (`sun_path` holds 108 bytes, NUL
/// included).
const MAX_SOCKET_PATH: usize = 107;

/// Every resource's socket path must fit a unix socket address: checked before a config is
/// served, at start and at every reload (a resource that cannot bind would retry for good).
fn check_socket_paths(config: &Config, kubelet_dir: &Path) -> Result<(), String> {
    for (r, name) in config.resources.iter().zip(config.socket_names()) {
        let path = kubelet_dir.join(&name);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "resource {:?} would serve on {} ({len} bytes), longer than a unix socket path can be ({MAX_SOCKET_PATH} bytes): shorten its resourceName, or --kubelet-dir",
                r.full_name(),
                path.display()
            ));
        }
    }
    Ok(())
}

/// Sets up logging on stderr: JSON lines (`--log-format json`, or `auto` when stderr is
/// not a terminal), else human text (colored on a terminal).
pub fn init_logging(args: &ServeArgs) -> Result<(), ServeError> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| ServeError::LogLevel(args.log_level.clone(), e.to_string()))?;
    let terminal = std::io::stderr().is_terminal();
    let json = args.log_json
        || match args.log_format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !terminal,
        };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let r = if json {
        b.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        b.with_ansi(terminal).try_init()
    };
    r.map_err(|e| ServeError::Logging(e.to_string()))
}

/// What every resource task shares.
struct Shared {
    kubelet_dir: PathBuf,
    root: HostRoot,
    devinfo_dir: PathBuf,
    devinfo_files: Arc<DevinfoFiles>,
    /// With `--use-cdi`: where the resources' CDI specs go.
    cdi_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    /// Bumped on every change in the kubelet socket directory.
    dir_events: watch::Receiver<u64>,
    /// Counts successful registrations.
    registered: watch::Sender<u64>,
}

/// A resource being served.
struct Running {
    config: ResourceConfig,
    socket: String,
    ctx: Arc<ResourceCtx>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Keeps the resource's device-info files in step with its devices.
    devinfo: JoinHandle<()>,
    /// With `--use-cdi`: keeps the resource's CDI spec in step with its devices.
    cdi: Option<JoinHandle<()>>,
}

/// The resources being served, by full name.
struct Resources {
    shared: Shared,
    running: BTreeMap<String, Running>,
}

/// What a config reload did to the served resources.
#[derive(Debug, Default)]
struct Applied {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    unchanged: Vec<String>,
}

impl Resources {
    fn start(&mut self, handle: ResourceHandle, socket: String, ctx: Option<Arc<ResourceCtx>>) {
        let name = handle.config.full_name();
        let sh = &self.shared;
        let ctx = ctx.unwrap_or_else(|| {
            Arc::new(ResourceCtx {
                full_name: name.clone(),
                devices: handle.devices.clone(),
                allocations: handle.allocations.clone(),
                root: sh.root.clone(),
                devinfo_dir: sh.devinfo_dir.clone(),
                devinfo_files: sh.devinfo_files.clone(),
                metrics: sh.metrics.clone(),
                cdi: sh.cdi_dir.as_ref().and_then(|dir| {
                    match CdiSpec::new(&name, dir, sh.root.clone()) {
                        Ok(spec) => Some(Arc::new(std::sync::Mutex::new(spec))),
                        // Checked with the config before: not reached.
                        Err(e) => {
                            tracing::error!("{e}");
                            None
                        }
                    }
                }),
            })
        });
        sh.metrics
            .add_resource(&name, handle.devices.clone(), handle.allocations.clone());
        sh.status.update(&name, |_| {});
        let (stop, stop_rx) = watch::channel(false);
        // The spec is written before the resource registers: after a reboot kubelet may
        // re-create checkpointed containers as soon as it has registered.
        let cdi = ctx.cdi.clone().map(|spec| {
            // A copy of the set: the poller must not wait on the list while files are written.
            let set = handle.devices.borrow().clone();
            crate::cdi::lock(&spec).refresh_logged(&set);
            tokio::spawn(crate::cdi::run(
                spec,
                handle.devices.clone(),
                stop_rx.clone(),
            ))
        });
        let devinfo = tokio::spawn(
            DevinfoSync::new(
                name.clone(),
                sh.devinfo_dir.clone(),
                sh.root.clone(),
                sh.devinfo_files.clone(),
            )
            .run(handle.devices.clone(), stop_rx.clone()),
        );
        let task = tokio::spawn(
            ResourceTask {
                dir: sh.kubelet_dir.clone(),
                socket: socket.clone(),
                ctx: ctx.clone(),
                events: sh.dir_events.clone(),
                shutdown: stop_rx,
                registered: Some(sh.registered.clone()),
                status: sh.status.clone(),
                metrics: sh.metrics.clone(),
            }
            .run(),
        );
        self.running.insert(
            name,
            Running {
                config: handle.config,
                socket,
                ctx,
                stop,
                task,
                devinfo,
                cdi,
            },
        );
    }

    /// Stops a resource's server (its socket is removed); returns its context.
    async fn stop(&mut self, name: &str) -> Option<Arc<ResourceCtx>> {
        let mut r = self.running.remove(name)?;
        let _ = r.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(3), &mut r.task)
            .await
            .is_err()
        {
            // The task marks itself not serving as soon as it leaves registration, so
            // "serving" here means it is still inside a Register call.
            let stuck = match self.shared.status.get(name) {
                Some(s) if s.serving => "its registration with kubelet did not finish",
                _ => "its gRPC server did not stop",
            };
            let sock = self.shared.kubelet_dir.join(&r.socket);
            tracing::warn!(
                resource = %name,
                "the resource did not stop within 3s ({stuck}); abandoning it: its socket {} may be left behind (the next start replaces it)",
                sock.display()
            );
            r.task.abort();
        }
        // Its device-info writes end before the files are removed at exit.
        if tokio::time::timeout(Duration::from_secs(3), &mut r.devinfo)
            .await
            .is_err()
        {
            tracing::warn!(resource = %name, "the resource's device-info writer did not stop in time; abandoning it");
            r.devinfo.abort();
        }
        if let Some(mut cdi) = r.cdi.take()
            && tokio::time::timeout(Duration::from_secs(3), &mut cdi)
                .await
                .is_err()
        {
            tracing::warn!(resource = %name, "the resource's CDI spec writer did not stop in time; abandoning it");
            cdi.abort();
        }
        self.shared.status.remove(name);
        self.shared.metrics.remove_resource(name);
        Some(r.ctx)
    }

    async fn stop_all(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        for n in names {
            self.stop(&n).await;
        }
    }

    /// Serves `handles` (the new config's resources, with their sockets): keeps what did
    /// not change, stops what went away, starts what is new.
    async fn apply(&mut self, handles: Vec<ResourceHandle>, sockets: Vec<String>) -> Applied {
        let mut out = Applied::default();
        let new: BTreeMap<String, (ResourceHandle, String)> = handles
            .into_iter()
            .zip(sockets)
            .map(|(h, s)| (h.config.full_name(), (h, s)))
            .collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            // Its VFs may go to another resource: their names must no longer resolve here.
            if let Some(spec) = self.stop(&n).await.and_then(|ctx| ctx.cdi.clone()) {
                let mut spec = crate::cdi::lock(&spec);
                match spec.remove() {
                    Ok(()) => {
                        tracing::info!(resource = %n, file = %spec.path.display(), "CDI spec removed")
                    }
                    Err(e) => {
                        tracing::warn!(resource = %n, "cannot remove the CDI spec {}: {e}", spec.path.display())
                    }
                }
            }
            tracing::info!(resource = %n, "resource removed from the config: its server stopped and its socket is gone");
            out.removed.push(n);
        }
        for (name, (handle, socket)) in new {
            match self.running.get_mut(&name) {
                Some(r) if r.socket == socket => {
                    if r.config == handle.config {
                        out.unchanged.push(name);
                    } else {
                        // Same channel: the open ListAndWatch streams get the new list.
                        r.config = handle.config;
                        out.changed.push(name);
                    }
                }
                Some(_) => {
                    // Its socket name changed (another resource now shares its name).
                    let ctx = self.stop(&name).await;
                    self.start(handle, socket, ctx);
                    out.changed.push(name);
                }
                None => {
                    self.start(handle, socket, None);
                    out.added.push(name);
                }
            }
        }
        out
    }
}

/// What a loaded config's check found: warnings, and notes on defaults worth knowing.
fn log_findings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    for n in &config.notes {
        tracing::info!("config: {n}");
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    let started = Instant::now();
    init_logging(&args)?;
    let root = HostRoot::new(&args.host_root)?;
    let (mut source, config, origin) = ConfigSource::load(args.config.as_deref())?;
    log_findings(&config);
    let kubelet_dir = args.kubelet_dir(&root);
    let devinfo_dir = args.devinfo_dir(&root);
    let events_dir = args.events_dir(&root);
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
    check_socket_paths(&config, &kubelet_dir).map_err(ServeError::SocketPath)?;
    let cdi_dir = args.cdi_dir(&root);
    let kinds = check_cdi_kinds(&config, cdi_dir.is_some())?;
    if let Some(dir) = &cdi_dir {
        std::fs::create_dir_all(dir).map_err(|error| ServeError::Dir {
            what: "the CDI spec directory",
            path: dir.clone(),
            error,
        })?;
        for f in crate::cdi::remove_others(dir, &kinds) {
            tracing::info!(file = %f.display(), "removed the CDI spec of a resource no longer configured");
        }
    }
    // Bound before anything else starts, so a taken port fails the start at once.
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|error| ServeError::Metrics { addr, error })?,
        ),
        None => None,
    };

    let fd_limit = crate::health::reserve_fd_headroom();
    let node = Node::scan(&root, config.rail_map.as_ref())?;
    match fd_limit {
        None => tracing::warn!(
            "cannot read the open-file limit: the poller keeps a descriptor per VF, with no headroom reserved for the rest of the plugin"
        ),
        Some(fd_limit) if fd_limit < node.vfs.len() as u64 + crate::health::FD_HEADROOM => {
            tracing::warn!(
                fd_limit,
                vfs = node.vfs.len(),
                kept = crate::health::kept_descriptors(),
                "the open-file limit is below one descriptor per VF plus {} for the rest of the plugin: \
                 VFs beyond it are polled by path (slower); raise the container's nofile limit",
                crate::health::FD_HEADROOM
            )
        }
        Some(_) => {}
    }
    let (monitor, handles) = Monitor::new(node, &config);
    for (name, why) in monitor.empty_resources() {
        tracing::warn!(resource = %name, "the resource selects no VF on this node: {why}");
    }
    log_resources(&handles, &origin);
    let (cmd_tx, cmd_rx) = std_mpsc::channel::<MonitorCommand>();
    let interval = Duration::from_millis(args.health_interval_ms);
    let poller = std::thread::Builder::new()
        .name("railvf-health".into())
        .spawn(move || monitor.run(interval, cmd_rx))
        .map_err(io("cannot start the health poller"))?;

    // One thread serves every resource: the work per call is small, and the poller has
    // its own thread so blocking sysfs reads never delay a gRPC answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime"))?;
    let devinfo_files = Arc::new(DevinfoFiles::default());
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(StatusBoard::default());
    let result = rt.block_on(async {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (events_tx, events_rx) = watch::channel(0u64);
        let watcher = tokio::spawn(watch_dir(
            kubelet_dir.clone(),
            events_tx,
            shutdown_rx.clone(),
        ));
        let mut background = vec![watcher];
        if let Some(l) = metrics_listener {
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(io("cannot serve the metrics address"))?;
            let addr = l.local_addr().map_err(io("cannot serve the metrics address"))?;
            tracing::info!(%addr, "serving /metrics and /healthz");
            background.push(tokio::spawn(crate::http::serve(
                l,
                metrics.clone(),
                status.clone(),
                shutdown_rx.clone(),
            )));
        }
        background.push(tokio::spawn(crate::events::run(
            events_dir.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
        )));
        let (reload_tx, mut reload_rx) = watch::channel(0u64);
        background.push(tokio::spawn(crate::reload::watch_file(
            source.path().to_path_buf(),
            reload_tx,
            shutdown_rx.clone(),
        )));

        let (reg_tx, mut reg_rx) = watch::channel(0u64);
        let mut resources = Resources {
            shared: Shared {
                kubelet_dir: kubelet_dir.clone(),
                root: root.clone(),
                devinfo_dir: devinfo_dir.clone(),
                devinfo_files: devinfo_files.clone(),
                cdi_dir: cdi_dir.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                dir_events: events_rx,
                registered: reg_tx,
            },
            running: BTreeMap::new(),
        };
        resources.apply(handles, config.socket_names()).await;
        let mut current = config;

        let n = current.resources.len() as u64;
        let first_registration = async move {
            let _ = reg_rx.wait_for(|c| *c >= n).await;
            tracing::info!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "every resource registered with kubelet"
            );
        };
        tokio::pin!(first_registration);
        let mut first_done = false;
        let signal = wait_for_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                r = &mut signal => { r?; break; }
                _ = &mut first_registration, if !first_done => { first_done = true; }
                r = reload_rx.changed() => {
                    if r.is_err() {
                        continue;
                    }
                    match source.check() {
                        Reload::Unchanged => {}
                        Reload::Rejected(why) => {
                            metrics.config_reload(false);
                            tracing::error!(config = %source.path().display(), "config rejected, keeping the previous configuration: {why}");
                        }
                        Reload::Apply(new) => {
                            log_findings(&new);
                            if let Err(why) = check_cdi_kinds(&new, cdi_dir.is_some())
                                .map_err(|e| e.to_string())
                                .and_then(|_| check_socket_paths(&new, &kubelet_dir))
                            {
                                metrics.config_reload(false);
                                tracing::error!(config = %source.path().display(), "config rejected, keeping the previous configuration: {why}");
                                continue;
                            }
                            if new == current {
                                tracing::info!(config = %source.path().display(), "config file changed; resources unchanged");
                            } else {
                                let t = Instant::now();
                                let (reply_tx, reply_rx) = oneshot::channel();
                                if cmd_tx.send(MonitorCommand::Reconfigure(new.clone(), reply_tx)).is_err() {
                                    tracing::error!("the health poller is gone; cannot apply the new config");
                                    metrics.config_reload(false);
                                    continue;
                                }
                                let Ok((handles, empty)) = reply_rx.await else {
                                    tracing::error!("the health poller is gone; cannot apply the new config");
                                    metrics.config_reload(false);
                                    continue;
                                };
                                for (name, why) in empty {
                                    tracing::warn!(resource = %name, "the resource selects no VF on this node: {why}");
                                }
                                log_resources(&handles, &source.path().display().to_string());
                                let a = resources.apply(handles, new.socket_names()).await;
                                tracing::info!(
                                    config = %source.path().display(),
                                    added = ?a.added,
                                    removed = ?a.removed,
                                    changed = ?a.changed,
                                    unchanged = ?a.unchanged,
                                    duration_ms = t.elapsed().as_secs_f64() * 1e3,
                                    "config reloaded"
                                );
                                current = new;
                            }
                            metrics.config_reload(true);
                        }
                    }
                }
            }
        }
        tracing::info!("stopping: unregistering sockets and removing device-info files");
        let _ = shutdown_tx.send(true);
        resources.stop_all().await;
        for t in background {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        Ok::<(), ServeError>(())
    });
    let removed = devinfo_files.remove_all();
    tracing::info!(removed, "device-info files removed");
    drop(cmd_tx);
    let _ = poller.join();
    result
}

fn log_resources(handles: &[ResourceHandle], origin: &str) {
    for h in handles {
        let set = h.devices.borrow();
        let healthy = set
            .devices
            .values()
            .filter(|d| d.health.is_healthy())
            .count();
        tracing::info!(
            resource = %h.config.full_name(),
            devices = set.devices.len(),
            healthy,
            config = %origin,
            "resource ready"
        );
    }
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

/// Kept for callers that only need the config (the daemon itself uses
/// [`ConfigSource::load`], which also remembers the text for reloads).
pub fn load_config(args: &ServeArgs) -> Result<(Config, String), ConfigError> {
    ConfigSource::load(args.config.as_deref()).map(|(_, c, o)| (c, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_too_long_for_a_unix_socket_is_refused() {
        let dir = Path::new("/host/var/lib/kubelet/device-plugins");
        let config = |name: &str| {
            Config::parse(
                &format!(r#"{{"resourceList":[{{"resourceName":"{name}"}}]}}"#),
                Path::new("config.json"),
            )
            .unwrap()
        };
        // 36 + "/railvf-" + 58 + ".sock" = 107 bytes: the longest that fits.
        assert_eq!(check_socket_paths(&config(&"a".repeat(58)), dir), Ok(()));
        let e = check_socket_paths(&config(&"a".repeat(59)), dir).unwrap_err();
        assert!(
            e.contains("108 bytes") && e.contains("shorten its resourceName"),
            "{e}"
        );
    }
}
