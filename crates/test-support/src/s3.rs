//! An S3-compatible server for blob-store tests: `s3s-fs` (the s3s project's S3
//! server over a directory; scripts/install-deps.sh installs it with `cargo install`),
//! on a free loopback port, with SigV4 authentication, one bucket, and a temp root
//! removed on `Drop`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TestServerError, find_program, free_port, wait_for_port};

/// A running `s3s-fs`.
pub struct S3Server {
    root: tempfile::TempDir,
    child: Child,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The one bucket, created empty.
    pub bucket: String,
    /// The access key id it accepts.
    pub access_key_id: String,
    /// The secret access key it accepts.
    pub secret_access_key: String,
}

impl S3Server {
    /// Starts it with an empty bucket `chat`.
    pub fn start() -> Result<Self, TestServerError> {
        let binary = find_program("s3s-fs")
            .or_else(|| {
                let home = std::env::var_os("HOME")?;
                let installed = Path::new(&home).join(".cargo/bin/s3s-fs");
                installed.exists().then_some(installed)
            })
            .ok_or(TestServerError::NotInstalled {
                binary: "s3s-fs",
                package: "s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary)",
            })?;
        let root = tempfile::Builder::new().prefix("sb-s3-").tempdir()?;
        let bucket = "chat".to_owned();
        std::fs::create_dir(root.path().join(&bucket))?;
        let access_key_id = format!("test-{}", std::process::id());
        let secret_access_key = format!("secret-{}-{}", std::process::id(), free_port());
        let log = root.path().join("s3s-fs.log");
        let out = std::fs::File::create(&log)?;
        let port = free_port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key_id, "--secret-key", &secret_access_key])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let server = Self {
            root,
            child,
            port,
            bucket,
            access_key_id,
            secret_access_key,
        };
        let waited = Duration::from_secs(10);
        if !wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)), waited) {
            return Err(TestServerError::NoStart {
                binary: "s3s-fs",
                waited,
                log: std::fs::read_to_string(&log).unwrap_or_default(),
            });
        }
        Ok(server)
    }

    /// The endpoint URL clients use.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory that holds the bucket's objects, one file per object.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(&self.bucket)
    }

    /// The objects stored under `prefix` (a path inside the bucket), as file paths.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.bucket_dir().join(prefix)];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
