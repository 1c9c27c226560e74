//! Prometheus metrics (OpenMetrics text, `prometheus-client`), all prefixed `railvf_`.
//!
//! Counters and histograms are updated where things happen (registration, gRPC calls, rail
//! events, config reloads). The per-VF figures are not copied anywhere: a collector reads
//! each resource's current [`DeviceSet`] at scrape time, so a resource removed by a config
//! reload leaves no stale series behind.
//!
//! The reference table of every family and label is in `docs/device-plugin.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use railvf_host::readiness::Check;
use tokio::sync::watch;

use crate::pool::{Allocations, DeviceSet};

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub resource: String,
    /// `ok` or the gRPC code of the refusal in snake case (`invalid_argument`, …).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RailLabels {
    pub outcome: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

type HistogramFamily = Family<ResourceLabels, Histogram, fn() -> Histogram>;

/// 50 µs … ~1.6 s: an Allocate takes a fraction of a millisecond; a slow one means
/// sysfs or the device-info directory is slow.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Rail-alignment outcomes and policies the CNI reports (see `events`).
pub const RAIL_OUTCOMES: [&str; 4] = ["aligned", "misaligned", "unknown", "refused"];
pub const RAIL_POLICIES: [&str; 3] = ["none", "warn", "require"];

/// What the collector reads for one resource.
#[derive(Clone, Debug)]
struct ResourceView {
    devices: watch::Receiver<Arc<DeviceSet>>,
    allocations: Arc<Allocations>,
}

/// Per-VF figures, read from the resources' device sets at scrape time.
#[derive(Debug, Default)]
struct VfCollector {
    resources: RwLock<BTreeMap<String, ResourceView>>,
}

impl Collector for VfCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let views = self.resources.read().unwrap_or_else(|p| p.into_inner());
        let sets: Vec<(&String, Arc<DeviceSet>, &Arc<Allocations>)> = views
            .iter()
            .map(|(n, v)| (n, v.devices.borrow().clone(), &v.allocations))
            .collect();
        {
            let mut m = enc.encode_descriptor(
                "vfs",
                "VFs of a resource by state: healthy and unhealthy add up to the VFs advertised to kubelet; allocated counts VFs handed out by Allocate and not known to be free since, of either health",
                None,
                MetricType::Gauge,
            )?;
            for (name, set, alloc) in &sets {
                let healthy = set
                    .devices
                    .values()
                    .filter(|d| d.health.is_healthy())
                    .count();
                let unhealthy = set.devices.len() - healthy;
                let allocated = alloc.count(set);
                for (state, n) in [
                    ("healthy", healthy),
                    ("unhealthy", unhealthy),
                    ("allocated", allocated),
                ] {
                    let labels = [("resource", name.as_str()), ("state", state)];
                    m.encode_family(&labels)?.encode_gauge(&(n as i64))?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "vf_check_failed",
                "1 when the VF fails the readiness check (driver, rdma, link_layer, port_state: the checks behind its health), else 0",
                None,
                MetricType::Gauge,
            )?;
            for (name, set, _) in &sets {
                for d in set.devices.values() {
                    let vf = d.addr.to_string();
                    for check in Check::HEALTH {
                        let labels = [
                            ("resource", name.as_str()),
                            ("vf", vf.as_str()),
                            ("check", check.name()),
                        ];
                        let v: i64 = d.failed.contains(check).into();
                        m.encode_family(&labels)?.encode_gauge(&v)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every metric the device plugin exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    vfs: Arc<VfCollector>,
    pub registered: Family<ResourceLabels, Gauge>,
    pub registrations: Family<ResourceLabels, Counter>,
    pub registration_failures: Family<ResourceLabels, Counter>,
    pub allocate_requests: Family<RequestLabels, Counter>,
    pub allocate_duration: HistogramFamily,
    pub preferred_requests: Family<RequestLabels, Counter>,
    pub preferred_duration: HistogramFamily,
    pub rail_alignment: Family<RailLabels, Counter>,
    pub rail_events_ignored: Family<ReasonLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("railvf");
        let m = Metrics {
            vfs: Arc::default(),
            registered: Family::default(),
            registrations: Family::default(),
            registration_failures: Family::default(),
            allocate_requests: Family::default(),
            allocate_duration: Family::new_with_constructor(latency_histogram),
            preferred_requests: Family::default(),
            preferred_duration: Family::new_with_constructor(latency_histogram),
            rail_alignment: Family::default(),
            rail_events_ignored: Family::default(),
            config_reloads: Family::default(),
            registry: Registry::default(),
        };
        let info: Family<VersionLabels, Gauge> = Family::default();
        info.get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
        registry.register(
            "build_info",
            "Always 1; the version label is the plugin's version",
            info,
        );
        registry.register_collector(Box::new(m.vfs.clone()));
        registry.register(
            "registered",
            "1 while the resource is registered with kubelet (the last Register succeeded and kubelet has not restarted since), else 0",
            m.registered.clone(),
        );
        registry.register(
            "registrations",
            "Successful Register calls per resource: the first one and every re-registration after a kubelet restart or a config reload",
            m.registrations.clone(),
        );
        registry.register(
            "registration_failures",
            "Failed Register attempts per resource (each is retried with backoff)",
            m.registration_failures.clone(),
        );
        registry.register(
            "allocate_requests",
            "Allocate calls per resource and result (ok, or the gRPC code of the refusal)",
            m.allocate_requests.clone(),
        );
        registry.register_with_unit(
            "allocate_duration",
            "Time to answer Allocate, per resource",
            Unit::Seconds,
            m.allocate_duration.clone(),
        );
        registry.register(
            "preferred_allocation_requests",
            "GetPreferredAllocation calls per resource and result (ok, or the gRPC code of the refusal)",
            m.preferred_requests.clone(),
        );
        registry.register_with_unit(
            "preferred_allocation_duration",
            "Time to answer GetPreferredAllocation, per resource",
            Unit::Seconds,
            m.preferred_duration.clone(),
        );
        for outcome in RAIL_OUTCOMES {
            for policy in RAIL_POLICIES {
                let _ = m.rail_alignment.get_or_create(&RailLabels {
                    outcome: outcome.into(),
                    policy: policy.into(),
                });
            }
        }
        registry.register(
            "rail_alignment",
            "Rail-alignment outcomes of CNI ADDs (aligned, misaligned, unknown, refused) by railPolicy (none, warn, require), read from the CNI's rail-event files",
            m.rail_alignment.clone(),
        );
        registry.register(
            "rail_events_ignored",
            "Rail-event files deleted without being counted, by reason (too_large, malformed, unsupported_version, unreadable, not_a_file)",
            m.rail_events_ignored.clone(),
        );
        for result in ["ok", "rejected"] {
            let _ = m.config_reloads.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        registry.register(
            "config_reload",
            "Config reloads after the file changed: ok (applied, or unchanged) or rejected (unreadable or invalid; the previous config stays)",
            m.config_reloads.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The exposition text (OpenMetrics, ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Starts reporting a resource's VFs (again, after a reload, with the same channel).
    pub fn add_resource(
        &self,
        name: &str,
        devices: watch::Receiver<Arc<DeviceSet>>,
        allocations: Arc<Allocations>,
    ) {
        let mut r = self
            .vfs
            .resources
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let fresh = r
            .insert(
                name.to_string(),
                ResourceView {
                    devices,
                    allocations,
                },
            )
            .is_none();
        if fresh {
            // Every per-resource series exists from the start (at 0), so rates and
            // alerts work before the first event.
            let l = resource(name);
            self.registered.get_or_create(&l).set(0);
            let _ = self.registrations.get_or_create(&l);
            let _ = self.registration_failures.get_or_create(&l);
            let ok = RequestLabels {
                resource: name.into(),
                result: "ok".into(),
            };
            let _ = self.allocate_requests.get_or_create(&ok);
            let _ = self.preferred_requests.get_or_create(&ok);
            let _ = self.allocate_duration.get_or_create(&l);
            let _ = self.preferred_duration.get_or_create(&l);
        }
    }

    /// Stops reporting a resource removed from the config: all its series go (a resource
    /// added back later starts its counters from 0, which Prometheus treats as a reset).
    pub fn remove_resource(&self, name: &str) {
        let mut r = self
            .vfs
            .resources
            .write()
            .unwrap_or_else(|p| p.into_inner());
        r.remove(name);
        let l = resource(name);
        self.registered.remove(&l);
        self.registrations.remove(&l);
        self.registration_failures.remove(&l);
        self.allocate_duration.remove(&l);
        self.preferred_duration.remove(&l);
        for result in [
            "ok",
            "invalid_argument",
            "failed_precondition",
            "internal",
            "not_found",
            "unavailable",
            "other_error",
        ] {
            let rl = RequestLabels {
                resource: name.into(),
                result: result.into(),
            };
            self.allocate_requests.remove(&rl);
            self.preferred_requests.remove(&rl);
        }
    }

    pub fn observe_allocate(&self, name: &str, result: &str, took: Duration) {
        self.allocate_requests
            .get_or_create(&RequestLabels {
                resource: name.into(),
                result: result.into(),
            })
            .inc();
        self.allocate_duration
            .get_or_create(&resource(name))
            .observe(took.as_secs_f64());
    }

    pub fn observe_preferred(&self, name: &str, result: &str, took: Duration) {
        self.preferred_requests
            .get_or_create(&RequestLabels {
                resource: name.into(),
                result: result.into(),
            })
            .inc();
        self.preferred_duration
            .get_or_create(&resource(name))
            .observe(took.as_secs_f64());
    }

    pub fn set_registered(&self, name: &str, registered: bool) {
        self.registered
            .get_or_create(&resource(name))
            .set(registered.into());
        if registered {
            self.registrations.get_or_create(&resource(name)).inc();
        }
    }

    pub fn registration_failed(&self, name: &str) {
        self.registered.get_or_create(&resource(name)).set(0);
        self.registration_failures
            .get_or_create(&resource(name))
            .inc();
    }

    pub fn rail_event(&self, outcome: &str, policy: &str) {
        self.rail_alignment
            .get_or_create(&RailLabels {
                outcome: outcome.into(),
                policy: policy.into(),
            })
            .inc();
    }

    pub fn rail_event_ignored(&self, reason: &str) {
        self.rail_events_ignored
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "rejected" }.into(),
            })
            .inc();
    }
}

fn resource(name: &str) -> ResourceLabels {
    ResourceLabels {
        resource: name.into(),
    }
}

/// The `result` label of a gRPC answer: `ok` or the status code in snake case.
pub fn result_label<T>(r: &Result<T, tonic::Status>) -> &'static str {
    use tonic::Code;
    match r {
        Ok(_) => "ok",
        Err(s) => match s.code() {
            Code::InvalidArgument => "invalid_argument",
            Code::FailedPrecondition => "failed_precondition",
            Code::Internal => "internal",
            Code::NotFound => "not_found",
            Code::Unavailable => "unavailable",
            _ => "other_error",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{FailedChecks, Health};
    use crate::pool::DeviceEntry;
    use railvf_host::PciAddr;

    fn set() -> Arc<DeviceSet> {
        let mut devices = BTreeMap::new();
        for (a, ok) in [("0000:18:00.1", true), ("0000:18:00.2", false)] {
            let addr: PciAddr = a.parse().unwrap();
            devices.insert(
                addr,
                DeviceEntry {
                    addr,
                    pf: "0000:18:00.0".parse().unwrap(),
                    vf_index: 0,
                    numa: Some(0),
                    rail: Some(0),
                    health: if ok {
                        Health::Healthy
                    } else {
                        Health::Unhealthy("port_state: …".into())
                    },
                    failed: if ok {
                        FailedChecks::default()
                    } else {
                        [Check::PortState].into_iter().collect()
                    },
                    in_pod: false,
                },
            );
        }
        Arc::new(DeviceSet {
            devices,
            ..Default::default()
        })
    }

    #[test]
    fn exposition_names_and_values() {
        let m = Metrics::new();
        let (_tx, rx) = watch::channel(set());
        let alloc = Arc::new(Allocations::default());
        alloc.handed_out(["0000:18:00.1".parse().unwrap()]);
        m.add_resource("nvidia.com/x", rx, alloc);
        m.set_registered("nvidia.com/x", true);
        m.observe_allocate("nvidia.com/x", "ok", Duration::from_micros(120));
        m.rail_event("misaligned", "warn");
        m.config_reload(false);
        let text = m.encode();
        for line in [
            r#"railvf_vfs{resource="nvidia.com/x",state="healthy"} 1"#,
            r#"railvf_vfs{resource="nvidia.com/x",state="unhealthy"} 1"#,
            r#"railvf_vfs{resource="nvidia.com/x",state="allocated"} 1"#,
            r#"railvf_vf_check_failed{resource="nvidia.com/x",vf="0000:18:00.2",check="port_state"} 1"#,
            r#"railvf_vf_check_failed{resource="nvidia.com/x",vf="0000:18:00.2",check="driver"} 0"#,
            r#"railvf_vf_check_failed{resource="nvidia.com/x",vf="0000:18:00.1",check="port_state"} 0"#,
            r#"railvf_registered{resource="nvidia.com/x"} 1"#,
            r#"railvf_registrations_total{resource="nvidia.com/x"} 1"#,
            r#"railvf_allocate_requests_total{resource="nvidia.com/x",result="ok"} 1"#,
            r#"railvf_allocate_duration_seconds_count{resource="nvidia.com/x"} 1"#,
            r#"railvf_rail_alignment_total{outcome="misaligned",policy="warn"} 1"#,
            r#"railvf_rail_alignment_total{outcome="aligned",policy="require"} 0"#,
            r#"railvf_config_reload_total{result="rejected"} 1"#,
            r#"railvf_config_reload_total{result="ok"} 0"#,
            "# TYPE railvf_allocate_duration_seconds histogram",
            "# UNIT railvf_allocate_duration_seconds seconds",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("railvf_build_info{version=\""), "{text}");
        m.remove_resource("nvidia.com/x");
        let text = m.encode();
        assert!(!text.contains("nvidia.com/x"), "{text}");
        // A new resource's series exist at 0 before anything happens.
        let (_tx, rx) = watch::channel(set());
        m.add_resource("nvidia.com/y", rx, Arc::default());
        let text = m.encode();
        for line in [
            r#"railvf_registrations_total{resource="nvidia.com/y"} 0"#,
            r#"railvf_registration_failures_total{resource="nvidia.com/y"} 0"#,
            r#"railvf_allocate_requests_total{resource="nvidia.com/y",result="ok"} 0"#,
            r#"railvf_preferred_allocation_requests_total{resource="nvidia.com/y",result="ok"} 0"#,
            r#"railvf_preferred_allocation_duration_seconds_count{resource="nvidia.com/y"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
