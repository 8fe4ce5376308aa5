//! The `ws-push` binary: everything is in the library; see `ws_push::run`.

use clap::Parser;
use switchboard_runtime::ServiceArgs;

fn main() -> std::process::ExitCode {
    let args = ServiceArgs::parse();
    switchboard_runtime::service_main(
        ws_push::SERVICE,
        env!("CARGO_PKG_VERSION"),
        args,
        |config: ws_push::Config, shutdown| async move { Ok(ws_push::run(config, shutdown).await?) },
    )
}
