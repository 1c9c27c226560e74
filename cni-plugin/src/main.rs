//! `railvf`: the CNI plugin's command line. Reads `CNI_COMMAND` and stdin, dispatches to the
//! verb, prints the result or the spec's error object on stdout, exits non-zero on error.
//! Logs go to stderr or `logFile`, never to stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use railvf_cni::env::{Command, Env};
use railvf_cni::error::CniError;
use railvf_cni::net::rtnl::Rtnl;
use railvf_cni::netconf::{self, MAX_CONFIG_BYTES, NetConf};
use railvf_cni::version::{self, Version};
use railvf_cni::{Ctx, add, check, del, gc, log, log_error, log_warn, status};

/// The shipped binary is linked against musl (scripts/build-cni.sh), whose malloc unmaps a
/// page as soon as the last allocation in it is freed: 27 `mmap` and 26 `munmap` in one ADD.
/// dlmalloc keeps what it got from the kernel for the process's short life. glibc builds
/// (development, tests) keep glibc's malloc.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let (version, outcome) = run(&mut stdin);
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(text)) => {
            let _ = writeln!(out, "{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            log_error!("{e}");
            let v = version
                .or_else(|| netconf::sniff_version(&stdin))
                .unwrap_or(Version::LATEST);
            let _ = writeln!(out, "{}", e.to_json(v));
            ExitCode::FAILURE
        }
    }
}

fn run(stdin: &mut Vec<u8>) -> (Option<Version>, Result<Option<String>, CniError>) {
    // VERSION's answer does not depend on stdin, and a caller may not close it: not read,
    // as the reference plugins' skeleton does. Every other verb reads it before the
    // environment is checked, so that an error object carries the config's cniVersion.
    let version_only = std::env::var_os("CNI_COMMAND").is_some_and(|c| c == "VERSION");
    if !version_only && let Err(e) = read_config(stdin) {
        return (None, Err(e));
    }
    let env = match Env::from_lookup(|k| std::env::var_os(k)) {
        Ok(e) => e,
        Err(e) => return (None, Err(e)),
    };
    if env.command == Command::Version {
        return (None, Ok(Some(version::exec())));
    }
    // DEL undoes an ADD: a config this version refuses must not keep the VF in the pod.
    let parsed = if env.command == Command::Del {
        Ok(NetConf::parse_for_teardown(stdin))
    } else {
        NetConf::parse(stdin).map(|c| (c, None))
    };
    let (conf, refused) = match parsed {
        Ok(c) => c,
        Err(e) => return (None, Err(e)),
    };
    let v = Some(conf.version);
    // A logFile that cannot be used (written for sriov-cni, hostile, its directory
    // unwritable) never stops a call: it logs to stderr, saying why.
    let (file, unusable_log) = match &conf.log_file {
        Some(p) => match log::open_log_file(p, &env.log_dir) {
            Ok(f) => (Some(f), None),
            Err(why) => (None, Some((p, why))),
        },
        None => (None, None),
    };
    log::init(
        conf.log_level,
        file,
        format!(
            "{} {}/{}: ",
            env.command.as_str(),
            env.container_id.as_deref().unwrap_or("-"),
            env.ifname.as_deref().unwrap_or("-")
        ),
    );
    if let Some((p, why)) = unusable_log {
        log_warn!(
            "\"logFile\" {:?} is not used: {why}; logging to stderr only (logFile must name a *.log file directly in railvf's log directory, {}, which RAILVF_LOG_DIR sets)",
            p.chars().take(200).collect::<String>(),
            env.log_dir.display()
        );
    }
    for note in &conf.log_notes {
        log_warn!("{note}");
    }
    if let Some(e) = refused {
        log_warn!(
            "this version of railvf refuses the network config ({}); DEL goes on with its cniVersion, name, VF and ipam.type where valid, and with what ADD recorded; fix the config before the next ADD",
            e.msg
        );
    }
    log::set_attachment(
        env.command.as_str(),
        env.container_id.as_deref(),
        env.ifname.as_deref(),
        conf.device.map(|d| d.to_string()),
    );
    let links = Rtnl::new();
    let ctx = Ctx::new(&env, &links);
    let res = match env.command {
        Command::Add => add::exec(&ctx, &conf).map(Some),
        Command::Del => del::exec(&ctx, &conf).map(|()| None),
        Command::Check => check::exec(&ctx, &conf).map(|()| None),
        Command::Status => status::exec(&ctx, &conf).map(|()| None),
        Command::Gc => gc::exec(&ctx, &conf).map(|()| None),
        Command::Version => Ok(Some(version::exec())),
    };
    if matches!(env.command, Command::Add | Command::Del) {
        log::finish(env.command.as_str(), res.as_ref().err().map(|e| e.code));
    }
    (v, res)
}

/// Reads the network config from stdin, at most [`MAX_CONFIG_BYTES`].
fn read_config(stdin: &mut Vec<u8>) -> Result<(), CniError> {
    if let Err(e) = std::io::stdin()
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(stdin)
    {
        return Err(CniError::new(
            railvf_cni::error::code::IO,
            format!("reading the network config from stdin: {e}"),
            "the runtime must pass the network config on stdin",
        ));
    }
    if stdin.len() as u64 > MAX_CONFIG_BYTES {
        stdin.clear();
        return Err(CniError::new(
            railvf_cni::error::code::INVALID_CONFIG,
            format!("the network config on stdin is larger than {MAX_CONFIG_BYTES} bytes"),
            "real network configs are a few KiB: check the NetworkAttachmentDefinition",
        ));
    }
    Ok(())
}
