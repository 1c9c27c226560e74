//! Live config: notice that the config file changed, decide whether to apply it.
//!
//! A ConfigMap volume is a directory where kubelet swaps a `..data` symlink atomically
//! (`..data_tmp` → rename over `..data`) and `config.json` is a symlink
//! `config.json -> ..data/config.json`. An inotify watch on the file's directory sees that
//! rename (and plain writes, creations and renames of a non-ConfigMap file); every event
//! just asks for a check, and the check compares the file's text with the text last acted
//! on, so bursts of events, the old data directory being removed, or a missed event (a
//! slow periodic check covers those) are all harmless.

use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{Inotify, WatchMask};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};

/// Check interval when no inotify event arrives.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Quiet time after the last inotify event before the file is read.
const SETTLE: Duration = Duration::from_millis(50);

/// What a check decided.
#[derive(Debug)]
pub enum Reload {
    /// Same text as last time (or still no file where none is required).
    Unchanged,
    /// The new text cannot be used; the message names the file, line, column and field.
    Rejected(String),
    /// A valid config to apply (may equal the running one).
    Apply(Config),
}

/// The config file and the text the daemon last acted on.
#[derive(Debug)]
pub struct ConfigSource {
    path: PathBuf,
    /// Named with `--config`: it must exist (an absent default path means the built-in
    /// default resource).
    explicit: bool,
    last_text: Option<String>,
    last_error: Option<String>,
}

impl ConfigSource {
    /// Loads the config at start: `--config` must exist; the default path may be absent.
    /// Returns the source, the config and where it came from (for the log).
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Config, String), ConfigError> {
        let (path, is_explicit) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut src = ConfigSource {
            path,
            explicit: is_explicit,
            last_text: None,
            last_error: None,
        };
        match std::fs::read_to_string(&src.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !is_explicit => Ok((
                src,
                Config::default_config(),
                format!("built-in default ({DEFAULT_CONFIG_PATH} does not exist)"),
            )),
            Err(error) => Err(ConfigError::Read {
                path: src.path.clone(),
                error,
            }),
            Ok(text) => {
                let c = Config::parse(&text, &src.path)?;
                src.last_text = Some(text);
                let origin = src.path.display().to_string();
                Ok((src, c, origin))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again and says what to do.
    pub fn check(&mut self) -> Reload {
        match std::fs::read_to_string(&self.path) {
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !self.explicit
                    && self.last_text.is_none() =>
            {
                Reload::Unchanged
            }
            Err(error) => {
                let msg = ConfigError::Read {
                    path: self.path.clone(),
                    error,
                }
                .to_string();
                if self.last_error.as_deref() == Some(msg.as_str()) {
                    return Reload::Unchanged;
                }
                self.last_error = Some(msg.clone());
                Reload::Rejected(msg)
            }
            Ok(text) => {
                self.last_error = None;
                if self.last_text.as_deref() == Some(text.as_str()) {
                    return Reload::Unchanged;
                }
                let r = Config::parse(&text, &self.path);
                self.last_text = Some(text);
                match r {
                    Ok(c) => Reload::Apply(c),
                    Err(e) => Reload::Rejected(e.to_string()),
                }
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Bumps `tx` whenever the config file may have changed: on inotify events in its
/// directory and every [`RECHECK`]. Survives the directory being absent or replaced.
pub async fn watch_file(path: PathBuf, tx: watch::Sender<u64>, mut stop: watch::Receiver<bool>) {
    let bump = |tx: &watch::Sender<u64>| tx.send_modify(|g| *g = g.wrapping_add(1));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut announced = false;
    loop {
        let stream = Inotify::init().and_then(|ino| {
            ino.watches().add(
                &dir,
                WatchMask::CREATE
                    | WatchMask::MOVED_TO
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF,
            )?;
            ino.into_event_stream([0u8; 4096])
        });
        match stream {
            Ok(mut events) => {
                tracing::debug!(dir = %dir.display(), "watching the config directory");
                announced = false;
                // It may have changed before the watch existed.
                bump(&tx);
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Ok(ev)) => {
                                if ev.mask.intersects(inotify::EventMask::DELETE_SELF | inotify::EventMask::MOVE_SELF | inotify::EventMask::IGNORED) {
                                    bump(&tx);
                                    break;
                                }
                                // Let a burst settle (an editor's truncate + write + close,
                                // kubelet's swap + cleanup) before the file is read.
                                let mut gone = false;
                                loop {
                                    tokio::select! {
                                        more = events.next() => match more {
                                            Some(Ok(_)) => continue,
                                            _ => { gone = true; break; }
                                        },
                                        _ = tokio::time::sleep(SETTLE) => break,
                                    }
                                }
                                bump(&tx);
                                if gone {
                                    break;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!(dir = %dir.display(), "inotify: {e}");
                                break;
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep(RECHECK) => bump(&tx),
                        _ = stopped(&mut stop) => return,
                    }
                }
            }
            Err(e) => {
                if !announced {
                    tracing::info!(dir = %dir.display(), "cannot watch the config directory ({e}); checking the file every {RECHECK:?}");
                    announced = true;
                }
                bump(&tx);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(if announced { RECHECK } else { Duration::from_millis(200) }) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"resourceList":[{"resourceName":"a"}]}"#;
    const B: &str = r#"{"resourceList":[{"resourceName":"b"}]}"#;

    #[test]
    fn checks_compare_text_and_keep_quiet_about_repeats() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("config.json");
        std::fs::write(&p, A).unwrap();
        let (mut src, c, _) = ConfigSource::load(Some(&p)).unwrap();
        assert_eq!(c.resources[0].name, "a");
        assert!(matches!(src.check(), Reload::Unchanged));
        std::fs::write(&p, B).unwrap();
        let Reload::Apply(c) = src.check() else {
            panic!("a new text is applied")
        };
        assert_eq!(c.resources[0].name, "b");
        assert!(matches!(src.check(), Reload::Unchanged));
        std::fs::write(&p, "{\n  \"resourceList\": 3\n}").unwrap();
        let Reload::Rejected(msg) = src.check() else {
            panic!("bad text is rejected")
        };
        assert!(
            msg.contains("line 2") && msg.contains("resourceList"),
            "{msg}"
        );
        assert!(matches!(src.check(), Reload::Unchanged), "said once");
        std::fs::remove_file(&p).unwrap();
        let Reload::Rejected(msg) = src.check() else {
            panic!("a missing --config file is rejected")
        };
        assert!(msg.contains("cannot read"), "{msg}");
        assert!(matches!(src.check(), Reload::Unchanged));
        std::fs::write(&p, A).unwrap();
        assert!(matches!(src.check(), Reload::Apply(_)));
    }
}
