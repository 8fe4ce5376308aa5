//! The FIFO and Unix socket for scripts, against a real ngircd.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use support::*;
use switchboard_proto::im::v1::LinkEvent;
use switchboard_test_support::NatsServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_and_socket_send_lines_and_skip_malformed_ones() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("im.fifo");
    let socket = dir.path().join("im.sock");
    let mut config = base_config(&nats);
    config.script.fifo = Some(fifo.clone());
    config.script.socket = Some(socket.clone());
    config.accounts.push(irc_account("irc", ngircd.port, "sbbot", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.up".to_owned()).await;
    let bridge = Running::start(config).await;
    let _: LinkEvent = next_event(&mut links).await;
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;

    for path in [&fifo, &socket] {
        let meta = std::fs::symlink_metadata(path).expect("created");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", path.display());
    }
    assert!(std::fs::symlink_metadata(&fifo).expect("fifo").file_type().is_fifo());

    // FIFO: malformed lines (and anything that looks like a command to run) are
    // skipped; the good lines are sent in order.
    let lines = "/exec touch /tmp/pwned\n\
                 garbage line\n\
                 {\"broken json\n\
                 /msg irc alice from the fifo\n\
                 {\"account\":\"irc\",\"to\":\"alice\",\"text\":\"json from the fifo\"}\n";
    let mut writer = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(&fifo)
        .expect("open FIFO for writing");
    writer.write_all(lines.as_bytes()).await.expect("write FIFO");
    drop(writer);
    assert_eq!(alice.next_privmsg().await.text, "from the fifo");
    assert_eq!(alice.next_privmsg().await.text, "json from the fifo");

    // Socket: one JSON reply line per request line.
    let stream = tokio::net::UnixStream::connect(&socket).await.expect("connect socket");
    let (read, mut write) = stream.into_split();
    let mut replies = BufReader::new(read).lines();
    write
        .write_all(b"nonsense\n/msg nope alice hi\n/msg irc alice from the socket\n")
        .await
        .expect("write socket");
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, replies.next_line())
            .await
            .expect("reply in time")
            .expect("read")
            .expect("a line");
        serde_json::from_str(&line).expect("reply is JSON")
    };
    let malformed = next().await;
    assert_eq!(malformed["ok"], false);
    let unknown = next().await;
    assert_eq!(unknown["ok"], false);
    assert!(
        unknown["error"].as_str().unwrap_or("").contains("unknown account"),
        "{unknown}"
    );
    let sent = next().await;
    assert_eq!(sent["ok"], true, "{sent}");
    assert!(sent["messageId"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(alice.next_privmsg().await.text, "from the socket");
    assert!(!std::path::Path::new("/tmp/pwned").exists());

    bridge.stop().await;
    // Both are removed on shutdown.
    assert!(!fifo.exists() && !socket.exists());
}
