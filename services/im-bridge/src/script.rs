//! The FIFO and Unix socket for scripts, like EKG2's `rc` plugin: each line is
//! `/msg <account> <to> <text>` or a JSON `SendRequest`
//! (`{"account":"ops","to":"#ops","text":"hi"}`). Malformed lines are logged and
//! skipped; nothing else is understood, and nothing is ever executed. Both are
//! created with mode 0600, so only the service's user (and root) can write.
//! The socket answers each line with one JSON line.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures::{SinkExt, StreamExt};
use nix::sys::stat::Mode;
use switchboard_proto::im::v1::SendRequest;
use tokio::net::UnixListener;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::account::Accounts;

/// The longest line read; longer lines are skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// Parses one line: `Ok(None)` for blank lines and `#` comments.
pub fn parse_line(line: &str) -> Result<Option<SendRequest>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    if trimmed.starts_with('{') {
        let request: SendRequest =
            serde_json::from_str(trimmed).map_err(|e| format!("not a JSON send request: {e}"))?;
        if request.account.is_empty() || request.to.is_empty() {
            return Err("JSON send request needs account, to and text".to_owned());
        }
        return Ok(Some(request));
    }
    let Some(rest) = trimmed.strip_prefix("/msg ") else {
        return Err("expected `/msg <account> <to> <text>` or a JSON object".to_owned());
    };
    let rest = rest.trim_start_matches(' ');
    let (account, rest) = rest.split_once(' ').ok_or("`/msg` needs <account> <to> <text>")?;
    let rest = rest.trim_start_matches(' ');
    let (to, text) = rest.split_once(' ').ok_or("`/msg` needs <account> <to> <text>")?;
    if text.trim().is_empty() {
        return Err("`/msg` needs a text".to_owned());
    }
    Ok(Some(SendRequest {
        account: account.to_owned(),
        to: to.to_owned(),
        text: text.to_owned(),
        ..SendRequest::default()
    }))
}

/// Handles one line: parse, send, and describe the outcome as a JSON line.
async fn handle_line(accounts: &Accounts, source: &str, line: &str) -> Option<String> {
    let reply = match parse_line(line) {
        Ok(None) => return None,
        Err(reason) => {
            tracing::warn!(source, reason, "script line skipped");
            serde_json::json!({ "ok": false, "error": reason })
        }
        Ok(Some(request)) => {
            let account = request.account.clone();
            match accounts.send(request).await {
                Ok(reply) => serde_json::json!({
                    "ok": true,
                    "messageId": reply.message_id,
                    "queued": reply.queued,
                    "parts": reply.parts,
                }),
                Err(e) => {
                    tracing::warn!(source, %account, error = %e, "script send failed");
                    serde_json::json!({ "ok": false, "code": format!("{:?}", e.code()), "error": e.to_string() })
                }
            }
        }
    };
    Some(reply.to_string())
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Creates the FIFO (or reuses an existing one), mode 0600.
fn make_fifo(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => {}
        Ok(_) => {
            return Err(Error::Io {
                what: format!("script.fifo {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a FIFO"),
            });
        }
        Err(_) => nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|e| io_error(format!("cannot create FIFO {}", path.display()))(std::io::Error::from(e)))?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(format!("chmod 0600 {}", path.display())))
}

/// Starts reading the FIFO at `path` until `shutdown`.
pub fn spawn_fifo(
    path: PathBuf,
    accounts: Accounts,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    make_fifo(&path)?;
    // Opened read-write so the FIFO never reports end of file between writers.
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(io_error(format!("cannot open FIFO {}", path.display())))?;
    tracing::info!(fifo = %path.display(), "reading script lines");
    Ok(tokio::spawn(async move {
        let mut lines = FramedRead::new(receiver, LinesCodec::new_with_max_length(MAX_LINE));
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => break,
                line = lines.next() => line,
            };
            match line {
                Some(Ok(line)) => {
                    let _ = handle_line(&accounts, "fifo", &line).await;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "FIFO line skipped"),
                None => break,
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// Starts listening on the Unix socket at `path` until `shutdown`.
pub fn spawn_socket(
    path: PathBuf,
    accounts: Accounts,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.file_type().is_socket() {
            return Err(Error::Io {
                what: format!("script.socket {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            });
        }
        std::fs::remove_file(&path).map_err(io_error(format!("cannot remove stale socket {}", path.display())))?;
    }
    let listener = UnixListener::bind(&path).map_err(io_error(format!("cannot listen on {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(format!("chmod 0600 {}", path.display())))?;
    tracing::info!(socket = %path.display(), "listening for script lines");
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "script socket accept failed");
                    continue;
                }
            };
            let accounts = accounts.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let (read, write) = stream.into_split();
                let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
                let mut out = FramedWrite::new(write, LinesCodec::new());
                loop {
                    let line = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        line = lines.next() => line,
                    };
                    let reply = match line {
                        Some(Ok(line)) => handle_line(&accounts, "socket", &line).await,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "socket line skipped");
                            Some(serde_json::json!({ "ok": false, "error": e.to_string() }).to_string())
                        }
                        None => break,
                    };
                    if let Some(reply) = reply
                        && out.send(reply).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn msg_lines_parse() {
        let r = parse_line("/msg ops #ops hello  world\n").ok().flatten();
        let r = r.as_ref().map(|r| (r.account.as_str(), r.to.as_str(), r.text.as_str()));
        assert_eq!(r, Some(("ops", "#ops", "hello  world")));
    }

    #[test]
    fn json_lines_parse() {
        let r = parse_line(r#"{"account":"x","to":"a@b","text":"hi","kind":"CHAT_KIND_DIRECT"}"#)
            .ok()
            .flatten();
        assert_eq!(r.map(|r| (r.to, r.kind)), Some(("a@b".to_owned(), 1)));
    }

    #[test]
    fn blank_and_comment_lines_are_skipped() {
        assert_eq!(parse_line("   "), Ok(None));
        assert_eq!(parse_line("# note"), Ok(None));
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            "/exec rm -rf /",
            "/msg ops",
            "/msg ops #ops",
            "/msg ops #ops   ",
            "{not json",
            "{}",
            "hello",
            "`id`",
        ] {
            assert!(parse_line(line).is_err(), "{line}");
        }
    }

    proptest! {
        #[test]
        fn any_line_parses_or_fails_without_panic(line in "\\PC{0,200}|/msg [a-z ]{0,20}") {
            let _ = parse_line(&line);
        }
    }
}
