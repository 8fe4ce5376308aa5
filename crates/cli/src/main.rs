//! `switchboard`: run the whole stack locally (`up`), and watch and poke the bus
//! (`tail`, `pub`, `req`, `streams`, `health`).

mod bus_tools;
mod demo;
mod demo_xmpp;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The NATS URL the tools use when none is given: the one `switchboard up` starts.
pub const LOCAL_NATS_URL: &str = "nats://127.0.0.1:14222";

/// Switchboard: a real-time integration hub over NATS.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack locally: nats-server (unless --nats-url) and the five services
    /// (--demo: with simulated calls and a demo page).
    Up(up::UpArgs),
    /// Print live messages on a subject (default: every event) with their CloudEvents attributes.
    Tail(bus_tools::TailArgs),
    /// Publish a CloudEvent with JSON data (to JetStream for event and push subjects).
    Pub(bus_tools::PubArgs),
    /// Send a command request and print the reply.
    Req(bus_tools::ReqArgs),
    /// List the JetStream streams and KV buckets with what they hold.
    Streams(bus_tools::ConnectArgs),
    /// Exit 0 when an HTTP URL answers 200 (for container health checks).
    Health {
        /// e.g. `http://127.0.0.1:8081/readyz`
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    switchboard_runtime::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchboard: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Tail(args) => bus_tools::tail(args).await,
            Command::Pub(args) => bus_tools::publish(args).await,
            Command::Req(args) => bus_tools::request(args).await,
            Command::Streams(args) => bus_tools::streams(args).await,
            Command::Health { url } => bus_tools::health(&url).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("switchboard: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
