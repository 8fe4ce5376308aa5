//! A throwaway PostgreSQL server for one test, like [`NatsServer`](crate::NatsServer):
//! `initdb` and `postgres` from Debian's `/usr/lib/postgresql/<version>/bin` (the
//! highest version installed), a fresh cluster in a temp dir, a free loopback port,
//! trust auth for the `postgres` role, stopped on `Drop`.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (containers, CI),
//! the temp dir is chown'ed to the `postgres` system user and every server command
//! runs through `runuser -u postgres --`; as any other user the commands run
//! directly. The server is managed with `pg_ctl` (`start -w` waits until it accepts
//! connections), so it does not depend on the child process `runuser` forks.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{TestServerError, free_port, wait_for_port};

/// A real PostgreSQL server (its own cluster), for one test.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// `Some((uid, gid))` of the `postgres` user when we run as root.
    run_as: Option<(u32, u32)>,
    running: bool,
}

impl Postgres {
    /// Creates a cluster in a temp dir and starts it on a free port.
    pub fn start() -> Result<Self, TestServerError> {
        let bin = bin_dir().ok_or(TestServerError::NotInstalled {
            binary: "postgres",
            package: "postgresql",
        })?;
        let dir = tempfile::Builder::new().prefix("sb-pg-").tempdir()?;
        let run_as = if running_as_root() {
            let ids = system_user("postgres").ok_or(TestServerError::NotInstalled {
                binary: "postgres (the postgres system user)",
                package: "postgresql",
            })?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))?;
            Some(ids)
        } else {
            None
        };
        let mut server = Self {
            bin,
            dir,
            port: free_port(),
            run_as,
            running: false,
        };
        let data = server.data_dir();
        let initdb = server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        if !initdb.status.success() {
            return Err(TestServerError::NoStart {
                binary: "initdb",
                waited: Duration::ZERO,
                log: format!(
                    "{}{}",
                    String::from_utf8_lossy(&initdb.stdout),
                    String::from_utf8_lossy(&initdb.stderr)
                ),
            });
        }
        server.spawn()?;
        Ok(server)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Runs one of the server's programs, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, TestServerError> {
        let path = self.bin.join(program);
        let mut command = if self.run_as.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        Ok(command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()?)
    }

    fn spawn(&mut self) -> Result<(), TestServerError> {
        let data = self.data_dir();
        let log = self.log_path().display().to_string();
        // Sockets in the temp dir, TCP on loopback only; fsync off (the tests crash
        // the server process, never the machine, so the OS page cache keeps what
        // was written).
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let waited = Duration::from_secs(30);
        let started = self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                &waited.as_secs().to_string(),
                "-D",
                &data,
                "-l",
                &log,
                "-o",
                &options,
            ],
        )?;
        if started.status.success() && wait_for_port(self.addr(), waited) {
            self.running = true;
            return Ok(());
        }
        Err(TestServerError::NoStart {
            binary: "postgres",
            waited,
            log: format!("{}{}", String::from_utf8_lossy(&started.stderr), self.log()),
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>` (trust auth, no password).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database (with `psql`), for a test that wants its own.
    pub fn create_database(&self, name: &str) -> Result<(), TestServerError> {
        let port = self.port.to_string();
        let out = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE \"{name}\""),
            ],
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestServerError::Io(std::io::Error::other(format!(
                "CREATE DATABASE {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))))
        }
    }

    /// Stops the server the way a crash does (`pg_ctl stop -m immediate`: no
    /// shutdown checkpoint, connections cut, WAL replayed at the next start). Keeps
    /// the cluster.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        let _ = self.run("pg_ctl", &["stop", "-w", "-m", "immediate", "-D", &data]);
        self.running = false;
    }

    /// Starts it again on the same port with the same cluster, for fault tests.
    pub fn restart(&mut self) -> Result<(), TestServerError> {
        self.stop();
        // The port may linger briefly; retry a few times.
        let mut last = None;
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The temp dir holding the cluster (`data/`), the socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `bin` dir of the highest PostgreSQL version under `/usr/lib/postgresql`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// True when this process runs as root (the owner of `/proc/self` is our uid).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn starts_restarts_and_stops() {
        let mut server = Postgres::start().unwrap();
        let addr = server.addr();
        assert!(TcpStream::connect(addr).is_ok());
        server.create_database("kept").unwrap();
        server.restart().unwrap();
        assert_eq!(server.port(), addr.port());
        assert!(TcpStream::connect(addr).is_ok());
        // The cluster survived the crash: the database is still there.
        assert!(server.create_database("kept").is_err(), "the database was kept");
        server.stop();
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }
}
