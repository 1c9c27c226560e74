//! Test-only crash points: `hit("moved")` between ADD's steps. In a build with the cargo
//! feature `test-faultpoints` (off by default, never in a shipped binary), a run whose
//! environment has `RAILVF_TEST_KILL_AT=<step>` dies by SIGKILL at that step — as if the
//! OOM killer or a node reboot struck there — so the reliability tests can prove DEL
//! converges from every point. With `RAILVF_TEST_KILL_DELAY_MS=<n>` the kill comes from a
//! helper thread `n` ms after the step, i.e. *during* what follows it (the readiness wait).
//! Without the feature `hit` is an empty inline function: no environment is read.

// A release build (what ships) can never carry them, not even through `--all-features`.
#[cfg(all(feature = "test-faultpoints", not(debug_assertions)))]
compile_error!("the test-faultpoints feature is for debug test builds only, never a release");

/// The variable naming the step to die at.
pub const KILL_AT_ENV: &str = "RAILVF_TEST_KILL_AT";
/// Optional delay, in ms, between reaching the step and dying.
pub const KILL_DELAY_ENV: &str = "RAILVF_TEST_KILL_DELAY_MS";

/// Whether this binary was built with fault points.
pub const ENABLED: bool = cfg!(feature = "test-faultpoints");

/// ADD reached `step`.
#[cfg(feature = "test-faultpoints")]
pub fn hit(step: &str) {
    if std::env::var_os(KILL_AT_ENV).is_none_or(|v| v != step) {
        return;
    }
    let delay = std::env::var(KILL_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    eprintln!(
        "railvf[{}] test fault point {step}: SIGKILL{}",
        std::process::id(),
        delay.map(|d| format!(" in {d} ms")).unwrap_or_default()
    );
    match delay {
        Some(ms) => {
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                die();
            });
        }
        None => die(),
    }
}

#[cfg(feature = "test-faultpoints")]
fn die() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// ADD reached `step` (no-op: built without `test-faultpoints`).
#[cfg(not(feature = "test-faultpoints"))]
#[inline(always)]
pub fn hit(_step: &str) {}
