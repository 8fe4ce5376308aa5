//! The `im-bridge` binary: everything is in the library; see `im_bridge::run`.

use clap::Parser;
use switchboard_runtime::ServiceArgs;

fn main() -> std::process::ExitCode {
    let args = ServiceArgs::parse();
    switchboard_runtime::service_main(
        im_bridge::SERVICE,
        env!("CARGO_PKG_VERSION"),
        args,
        |config: im_bridge::Config, shutdown| async move { Ok(im_bridge::run(config, shutdown).await?) },
    )
}
