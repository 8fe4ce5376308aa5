//! The `hook-runner` binary: everything is in the library; see `hook_runner::run`.

use clap::Parser;
use switchboard_runtime::ServiceArgs;

fn main() -> std::process::ExitCode {
    let args = ServiceArgs::parse();
    switchboard_runtime::service_main(
        hook_runner::SERVICE,
        env!("CARGO_PKG_VERSION"),
        args,
        |config: hook_runner::Config, shutdown| async move { Ok(hook_runner::run(config, shutdown).await?) },
    )
}
