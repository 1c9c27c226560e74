//! What `/healthz` answers: per resource, whether its gRPC server serves and how its
//! registration with kubelet stands.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// One resource's serving and registration state, kept by its task.
#[derive(Clone, Debug, Default)]
pub struct ResourceStatus {
    /// The gRPC server is listening on the resource's socket.
    pub serving: bool,
    /// Why the socket cannot be served (set while binding fails).
    pub serve_error: Option<String>,
    /// The last `Register` succeeded and kubelet has not restarted since.
    pub registered: bool,
    /// When the current run of failed `Register` attempts began.
    pub failing_since: Option<Instant>,
    /// Failed attempts in the current run.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The retry backoff has reached its cap: the registration is failing, not merely
    /// being retried (kubelet restarting takes well under the ramp).
    pub backoff_exhausted: bool,
}

/// Every resource's [`ResourceStatus`], by full resource name.
#[derive(Debug, Default)]
pub struct StatusBoard {
    resources: Mutex<BTreeMap<String, ResourceStatus>>,
}

impl StatusBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ResourceStatus>> {
        self.resources.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update(&self, resource: &str, f: impl FnOnce(&mut ResourceStatus)) {
        f(self.lock().entry(resource.to_string()).or_default());
    }

    pub fn remove(&self, resource: &str) {
        self.lock().remove(resource);
    }

    pub fn get(&self, resource: &str) -> Option<ResourceStatus> {
        self.lock().get(resource).cloned()
    }

    /// `Ok(one line)` for 200, `Err(one line naming each failing resource)` for 503.
    ///
    /// Healthy: every resource's server serves (or is being started) and its last
    /// registration succeeded or is being retried while the backoff still ramps up.
    pub fn healthz(&self) -> Result<String, String> {
        let now = Instant::now();
        let r = self.lock();
        let mut bad = Vec::new();
        let mut registering = Vec::new();
        for (name, s) in r.iter() {
            if !s.serving
                && let Some(e) = &s.serve_error
            {
                bad.push(format!("{name}: not serving its socket: {e}"));
                continue;
            }
            if s.registered {
                continue;
            }
            let since = s
                .failing_since
                .map(|t| format!(" for {:.1}s", now.duration_since(t).as_secs_f64()))
                .unwrap_or_default();
            let why = s.last_error.as_deref().unwrap_or("not attempted yet");
            if s.backoff_exhausted {
                bad.push(format!(
                    "{name}: registration with kubelet failing{since} ({} attempts): {why}",
                    s.attempts
                ));
            } else {
                registering.push(format!("{name} registering{since}"));
            }
        }
        if !bad.is_empty() {
            return Err(bad.join("; "));
        }
        Ok(match (r.len(), registering.is_empty()) {
            (0, _) => "ok: starting".into(),
            (n, true) => format!("ok: {n} resource(s) registered"),
            (_, false) => format!("ok: {}", registering.join("; ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_states() {
        let b = StatusBoard::default();
        assert!(b.healthz().is_ok());
        b.update("nvidia.com/x", |s| s.serving = true);
        assert!(b.healthz().unwrap().contains("registering"));
        b.update("nvidia.com/x", |s| {
            s.failing_since = Some(Instant::now());
            s.attempts = 3;
            s.last_error = Some("kubelet is not running yet".into());
        });
        assert!(b.healthz().is_ok(), "still within the backoff ramp");
        b.update("nvidia.com/x", |s| s.backoff_exhausted = true);
        let e = b.healthz().unwrap_err();
        assert!(
            e.contains("nvidia.com/x")
                && e.contains("kubelet is not running yet")
                && !e.contains('\n'),
            "{e}"
        );
        b.update("nvidia.com/x", |s| {
            *s = ResourceStatus {
                serving: true,
                registered: true,
                ..Default::default()
            }
        });
        assert_eq!(b.healthz().unwrap(), "ok: 1 resource(s) registered");
        b.update("nvidia.com/y", |s| {
            s.serve_error = Some("permission denied".into())
        });
        assert!(
            b.healthz()
                .unwrap_err()
                .contains("nvidia.com/y: not serving")
        );
        b.remove("nvidia.com/y");
        assert!(b.healthz().is_ok());
    }
}
