//! `ami-sim`: an AMI simulator on a TCP port (see `ami_bridge::sim`).
//!
//! `ami-sim --listen 127.0.0.1:5038 --user sb:sbsecret [--old-command-style]
//! [--tls-cert cert.pem --tls-key key.pem]`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ami_bridge::sim::{SimConfig, SimHandle, SimTls};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Command line of `ami-sim`.
#[derive(Debug, Parser)]
#[command(version, about = "An Asterisk AMI simulator for tests, benchmarks and demos")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5038")]
    listen: SocketAddr,
    /// An account `user:secret` (repeatable).
    #[arg(long = "user", default_value = "sb:sbsecret")]
    users: Vec<String>,
    /// Answer Command the pre-14 way (`Response: Follows`).
    #[arg(long)]
    old_command_style: bool,
    /// Serve TLS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let users: BTreeMap<String, String> = args
        .users
        .iter()
        .filter_map(|u| u.split_once(':'))
        .map(|(u, s)| (u.to_owned(), s.to_owned()))
        .collect();
    let config = SimConfig {
        users,
        old_command_style: args.old_command_style,
        tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| SimTls { cert, key }),
        ..SimConfig::default()
    };
    let shutdown = CancellationToken::new();
    match SimHandle::start(args.listen, config, shutdown.clone()).await {
        Ok(sim) => {
            println!("ami-sim listening on {}", sim.addr());
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ami-sim: cannot serve on {}: {e}", args.listen);
            std::process::ExitCode::FAILURE
        }
    }
}
