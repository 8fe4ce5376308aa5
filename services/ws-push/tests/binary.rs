//! The `ws-push` binary refuses bad config with a clear error naming the file and the
//! key (exit code 2), and fails clearly when NATS is unreachable.

#[test]
fn bad_config_and_unreachable_nats_are_clear_errors() {
    switchboard_test_support::binary::assert_config_handling(env!("CARGO_BIN_EXE_ws-push"));
}
