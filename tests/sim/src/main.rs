//! `railvf-sim`: build a simulated DGX node and keep it alive until SIGINT / SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use railvf_sim::{Fault, SimOptions, Topology};

mod demo;

#[derive(Parser)]
#[command(
    name = "railvf-sim",
    version,
    about = "Simulated DGX node for railvf tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the node, print its root, run the mirror and SM until SIGINT/SIGTERM, clean up.
    Build(BuildArgs),
    /// The whole job on a simulated DGX H200: inventory, rail-aligned allocation through the
    /// real device plugin, attachment through the real CNI, readiness, teardown.
    Demo(demo::DemoArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// dgx-h200, dgx-h100, or the path of a topology JSON file.
    #[arg(long, default_value = "dgx-h200")]
    topology: String,
    /// Build here (created if missing, must be empty) instead of a temporary directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Keep the tree after exit.
    #[arg(long)]
    keep_root: bool,
    /// VFs per compute PF (default: the topology's, 8 on DGX).
    #[arg(long)]
    vfs_per_pf: Option<u16>,
    /// VFs per storage PF.
    #[arg(long, default_value_t = 0)]
    storage_vfs_per_pf: u16,
    /// Tag replacing the leading "ib" of VF netdev names (1-4 lowercase alnum chars).
    #[arg(long, conflicts_with = "real_names")]
    tag: Option<String>,
    /// Use the real VF netdev names (ibp24s0f1 …).
    #[arg(long)]
    real_names: bool,
    /// Fixture only, no veths (no root needed).
    #[arg(long)]
    no_links: bool,
    /// VFs start with zero GUIDs, LID 0x0 and port DOWN.
    #[arg(long)]
    unassigned_guids: bool,
    /// Delay between a GUID write and the SM assigning a LID.
    #[arg(long, default_value_t = 300)]
    lid_delay_ms: u64,
    /// A build-time fault, `<pci>:<fault>` (e.g. 0000:18:00.1:lid-zero); repeatable.
    #[arg(long = "fault", value_name = "PCI:FAULT")]
    faults: Vec<String>,
}

fn parse_fault(spec: &str) -> Result<(String, Fault)> {
    // The address itself contains colons: the fault is after the last one.
    let (addr, fault) = spec
        .rsplit_once(':')
        .with_context(|| format!("--fault {spec:?}: expected <pci>:<fault>"))?;
    Ok((addr.to_owned(), fault.parse()?))
}

fn build(args: BuildArgs) -> Result<()> {
    let topology = Topology::by_name(&args.topology)?;
    let mut opts = SimOptions::new(topology)
        .storage_vfs_per_pf(args.storage_vfs_per_pf)
        .lid_delay(Duration::from_millis(args.lid_delay_ms));
    if let Some(n) = args.vfs_per_pf {
        opts = opts.vfs_per_pf(n);
    }
    if let Some(t) = &args.tag {
        opts = opts.tag(t);
    }
    if args.real_names {
        opts = opts.real_names();
    }
    if args.no_links {
        opts = opts.no_links();
    }
    if args.unassigned_guids {
        opts = opts.unassigned_guids();
    }
    if let Some(r) = args.root {
        opts = opts.root(r);
    }
    if args.keep_root {
        opts = opts.keep_root();
    }
    for spec in &args.faults {
        let (addr, fault) = parse_fault(spec)?;
        opts = opts.fault(addr, fault);
    }
    if !args.no_links && !nix::unistd::geteuid().is_root() {
        bail!("building real VF links needs root (or use --no-links)");
    }

    // Block the signals before any thread exists so every thread inherits the mask and
    // they are only ever taken by the sigwait below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;

    let sim = opts.build().context("building the simulated node")?;
    print!("{}", sim.summary());
    println!("export RAILVF_HOST_ROOT={}", sim.root().display());
    println!(
        "running the mirror and subnet manager; Ctrl-C (SIGINT) or SIGTERM stops and cleans up"
    );
    let sig = signals.wait().context("waiting for a signal")?;
    eprintln!("railvf-sim: {sig}, cleaning up");
    drop(sim);
    Ok(())
}

fn main() -> Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Build(args) => build(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Demo(args) => demo::exec(args),
    }
}
