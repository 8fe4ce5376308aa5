//! The `ami-bridge` binary: everything is in the library; see `ami_bridge::run`.

use clap::Parser;
use switchboard_runtime::ServiceArgs;

fn main() -> std::process::ExitCode {
    let args = ServiceArgs::parse();
    switchboard_runtime::service_main(
        ami_bridge::SERVICE,
        env!("CARGO_PKG_VERSION"),
        args,
        |config: ami_bridge::Config, shutdown| async move { Ok(ami_bridge::run(config, shutdown).await?) },
    )
}
