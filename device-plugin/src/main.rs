//! `railvf-device-plugin`: command line only; each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use railvf_device_plugin::serve::{self, ServeArgs};

mod inspect;
mod setup_vfs;

#[derive(Parser)]
#[command(
    name = "railvf-device-plugin",
    version,
    about = "kubelet device plugin for SR-IOV RDMA VFs on GPU nodes",
    // `railvf-device-plugin --config x` means `serve --config x`.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the device plugin daemon (the default when no subcommand is given).
    Serve(ServeArgs),
    /// The node's VF inventory with every RDMA readiness check, one line per VF.
    Inspect(inspect::InspectArgs),
    /// Host preparation: create the compute PFs' VFs, give them stable GUIDs, keep host
    /// network managers off them.
    SetupVfs(setup_vfs::SetupVfsArgs),
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    serve::run(args)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Inspect(args)) => inspect::exec(args),
        Some(Command::SetupVfs(args)) => setup_vfs::exec(args),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("railvf-device-plugin: {e:#}");
            ExitCode::from(2)
        }
    }
}
