//! `exec`: a program with an argument vector, never a shell. It runs in its own
//! process group with only the allowed environment; the timeout kills the whole
//! group; output is captured up to a cap while the rest is drained.

use std::process::Stdio;
use std::time::Instant;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use switchboard_proto::hook::v1::ActionResult;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{capped, result};
use crate::render::RenderedExec;

/// How long readers may go on after the process group is gone.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn read_capped<R: AsyncRead + Unpin>(mut reader: R, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // The group id is the child's pid (process_group(0)); ESRCH means it is gone.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills the process group when dropped: at the end of the action, and also when
/// the action itself is dropped (the rule's run timeout, shutdown).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Runs the program and waits for it (or its timeout).
pub async fn run(name: &str, spec: &RenderedExec) -> ActionResult {
    let started = Instant::now();
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let mut r = result(name, "exec", started);
            r.exit_code = -1;
            r.error = format!("cannot start {}: {e}", spec.program.display());
            return r;
        }
    };
    let pid = child.id();
    let group = GroupGuard(pid);
    if let (Some(mut stdin), Some(text)) = (child.stdin.take(), spec.stdin.clone()) {
        tokio::spawn(async move {
            // A program that does not read its stdin closes it: not an error.
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let limit = spec.output_limit;
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_capped(s, limit)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_capped(s, limit)));
    let waited = tokio::time::timeout(spec.timeout, child.wait()).await;
    let mut r = result(name, "exec", started);
    match waited {
        Ok(Ok(status)) => {
            r.exit_code = status.code().unwrap_or(-1);
            r.success = status.code().is_some_and(|c| spec.success_codes.contains(&c));
            if !r.success {
                r.error = match status.code() {
                    Some(code) => format!("exit code {code}"),
                    None => format!("killed by a signal ({status})"),
                };
            }
        }
        Ok(Err(e)) => {
            r.exit_code = -1;
            r.error = format!("wait failed: {e}");
        }
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            r.exit_code = -1;
            r.error = format!("timed out after {:?}; process group killed", spec.timeout);
        }
    }
    // Children left in the group would hold the pipes open: they end with the run.
    drop(group);
    let collect = |handle: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>| async move {
        match handle {
            Some(h) => tokio::time::timeout(DRAIN_GRACE, h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => (Vec::new(), false),
        }
    };
    let (out, out_cut) = collect(stdout).await;
    let (err, err_cut) = collect(stderr).await;
    let (output, cut1) = capped(&out, limit);
    let (stderr, cut2) = capped(&err, limit);
    r.output = output;
    r.stderr = stderr;
    r.truncated = out_cut || err_cut || cut1 || cut2;
    r.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    r
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn spec(program: &str, args: &[&str]) -> RenderedExec {
        RenderedExec {
            program: PathBuf::from(program),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
            stdin: None,
            timeout: Duration::from_secs(10),
            output_limit: 1024,
            success_codes: vec![0],
        }
    }

    #[tokio::test]
    async fn arguments_are_never_interpreted_by_a_shell() {
        let text = "hi; touch /tmp/hook-runner-pwned $(id) `id` | cat";
        let r = run("echo", &spec("/bin/echo", &[text])).await;
        assert!(r.success, "{r:?}");
        assert_eq!(r.output, format!("{text}\n"));
        assert!(!std::path::Path::new("/tmp/hook-runner-pwned").exists());
    }

    #[tokio::test]
    async fn exit_code_stdin_env_and_cwd() {
        let mut s = spec("/usr/bin/env", &[]);
        s.env.insert("ONLY".into(), "this".into());
        let r = run("env", &s).await;
        assert_eq!(r.output, "ONLY=this\n", "the environment is only what the rule allows");

        let mut s = spec("/bin/cat", &[]);
        s.stdin = Some("from stdin".into());
        assert_eq!(run("cat", &s).await.output, "from stdin");

        let mut s = spec("/bin/pwd", &[]);
        s.cwd = Some(PathBuf::from("/tmp"));
        assert_eq!(run("pwd", &s).await.output, "/tmp\n");

        let r = run("false", &spec("/bin/false", &[])).await;
        assert!(!r.success);
        assert_eq!(r.exit_code, 1);
        let r = run("missing", &spec("/nonexistent/program", &[])).await;
        assert!(!r.success && r.error.contains("cannot start"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        // sh starts a grandchild sleep that inherits the pipes; only killing the
        // group ends both. (The script is a constant: no user data in a shell.)
        let mut s = spec("/bin/sh", &["-c", "sleep 30 & sleep 30; echo never"]);
        s.timeout = Duration::from_millis(300);
        let r = run("sleepy", &s).await;
        assert!(!r.success);
        assert_eq!(r.exit_code, -1);
        assert!(r.error.contains("timed out"), "{}", r.error);
        assert!(r.output.is_empty(), "the script never got past the sleeps");
    }

    /// Dead or a zombie waiting for its reaper.
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn dropping_the_action_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // A constant script: the grandchild's pid goes to a file the test chose.
        let script = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
        let s = spec("/bin/sh", &["-c", &script]);
        let mut run = Box::pin(run("dropped", &s));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let pid = loop {
            tokio::select! {
                _ = &mut run => panic!("the script ended on its own"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if let Ok(pid) = std::fs::read_to_string(&pid_file)
                && !pid.trim().is_empty()
            {
                break pid.trim().to_owned();
            }
            assert!(tokio::time::Instant::now() < deadline, "no pid file");
        };
        assert!(!gone(&pid), "the grandchild runs");
        drop(run);
        while !gone(&pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the grandchild survived the drop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn output_is_capped_and_marked() {
        let mut s = spec("/usr/bin/head", &["-c", "100000", "/dev/zero"]);
        s.output_limit = 10;
        let r = run("big", &s).await;
        assert!(r.success);
        assert_eq!(r.output.len(), 10);
        assert!(r.truncated);
    }
}
