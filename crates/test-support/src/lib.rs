//! Test helpers shared by every crate's tests.
//!
//! [`NatsServer`] starts a real `nats-server` (found on `PATH`) with JetStream on a
//! free loopback port and a temporary store dir, and stops it on `Drop`, like the
//! nats.rs test suite does. Tests never touch the system NATS on 4222.
//! [`Postgres`] does the same for PostgreSQL (its own cluster, crash and restart),
//! [`S3Server`] for an S3-compatible blob store.

pub mod binary;
pub mod im;
pub mod postgres;
pub mod s3;

pub use postgres::Postgres;
pub use s3::S3Server;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a test server did not start.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    /// The binary is not installed.
    #[error("{binary} not found on PATH: run scripts/install-deps.sh (or apt-get install {package})")]
    NotInstalled {
        /// The program name.
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// It started but did not listen in time.
    #[error("{binary} did not start within {waited:?}; its log:\n{log}")]
    NoStart {
        /// The program name.
        binary: &'static str,
        /// How long we waited.
        waited: Duration,
        /// What it printed.
        log: String,
    },
    /// Any I/O error around it.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Finds a program on `PATH` (also looking in `/usr/sbin`, where Debian puts
/// `nats-server` and `ngircd`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A real `nats-server` with JetStream, for one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a fresh store dir.
    pub fn start() -> Result<Self, TestServerError> {
        let binary = find_program("nats-server").ok_or(TestServerError::NotInstalled {
            binary: "nats-server",
            package: "nats-server",
        })?;
        let dir = tempfile::Builder::new().prefix("sb-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            port: 0,
            binary,
            dir,
        };
        server.spawn_on(0)?;
        Ok(server)
    }

    fn spawn_on(&mut self, port: u16) -> Result<(), TestServerError> {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let log_path = self.dir.path().join("nats.log");
        let port_arg = if port == 0 { "-1".to_owned() } else { port.to_string() };
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "--http_port", "0"])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.child = Some(child);
        let waited = Duration::from_secs(10);
        let deadline = Instant::now() + waited;
        while Instant::now() < deadline {
            if let Some(found) = read_client_port(&ports_dir, pid)
                && wait_for_port(SocketAddr::from(([127, 0, 0, 1], found)), Duration::from_secs(5))
            {
                self.port = found;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        self.stop();
        Err(TestServerError::NoStart {
            binary: "nats-server",
            waited,
            log,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs (for memory sampling).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's temp dir (store and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL: a crash, not a clean stop). Keeps the store.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store, for fault tests.
    pub fn restart(&mut self) -> Result<(), TestServerError> {
        self.stop();
        let port = self.port;
        // The port may linger briefly; retry a few times.
        let mut last = None;
        for _ in 0..20 {
            match self.spawn_on(port) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nats-server writes `<name>_<pid>.ports` with JSON holding `"nats": ["nats://host:port"]`.
fn read_client_port(dir: &Path, pid: u32) -> Option<u16> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(&format!("_{pid}.ports")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let start = text.find("nats://")? + "nats://".len();
        let rest = &text[start..];
        let end = rest.find('"')?;
        let host_port = &rest[..end];
        return host_port.rsplit(':').next()?.parse().ok();
    }
    None
}

/// An unsigned JWT (`alg: none`, empty signature) with these claims, as an attacker
/// would send it: services must refuse it whatever the claims say.
pub fn unsigned_jwt(claims: &str) -> String {
    format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims.as_bytes())
    )
}

/// Base64url without padding (RFC 4648 section 5), as JWTs use it.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_restarts_and_stops() {
        let mut server = NatsServer::start().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(TcpStream::connect(addr).is_ok());
        assert!(server.log().contains("JetStream"), "log: {}", server.log());
        server.restart().unwrap();
        assert_eq!(server.port(), addr.port());
        assert!(TcpStream::connect(addr).is_ok());
        server.stop();
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(unsigned_jwt("{}"), "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.e30.");
    }
}
