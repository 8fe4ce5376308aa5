//! The `chat-store` binary: everything is in the library; see `chat_store::run`.

use clap::Parser;
use switchboard_runtime::ServiceArgs;

fn main() -> std::process::ExitCode {
    let args = ServiceArgs::parse();
    switchboard_runtime::service_main(
        chat_store::SERVICE,
        env!("CARGO_PKG_VERSION"),
        args,
        |config: chat_store::Config, shutdown| async move { Ok(chat_store::run(config, shutdown).await?) },
    )
}
