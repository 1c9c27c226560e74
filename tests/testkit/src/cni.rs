//! The outcome of one run of the `railvf` binary, as the CNI tests and the end-to-end tests
//! look at it.

use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use serde_json::Value;

/// One railvf invocation's outcome.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    /// The signal that ended it, if one did (SIGKILL at a fault point: 9).
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            ok: o.status.success(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The spec error object of a failed call: checks its shape, returns its code and
    /// `msg | details`.
    pub fn err(&self) -> (u64, String) {
        assert!(!self.ok, "expected a failure, got success: {}", self.stdout);
        let v = self.json();
        assert!(
            v["cniVersion"].as_str().is_some_and(|s| !s.is_empty()),
            "error object without cniVersion: {}",
            self.stdout
        );
        assert!(
            v["msg"].as_str().is_some_and(|s| !s.is_empty()),
            "error object without msg: {}",
            self.stdout
        );
        (
            v["code"]
                .as_u64()
                .expect("error object without a numeric code"),
            format!(
                "{} | {}",
                v["msg"].as_str().unwrap_or(""),
                v["details"].as_str().unwrap_or("")
            ),
        )
    }

    pub fn expect_ok(self) -> Self {
        assert!(
            self.ok,
            "railvf failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.assert_no_panic();
        self
    }

    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "railvf panicked:\n{}",
            self.stderr
        );
    }
}
