//! `switchboard up`: the whole stack on one machine, no Docker.
//!
//! Starts `nats-server` with JetStream in the data dir (unless `--nats-url` names
//! one), then the five services with embedded defaults (SQLite, local files), each
//! in its own working dir under the data dir. Their logs are prefixed and coloured;
//! a service that exits is restarted with backoff; Ctrl-C or SIGTERM stops them all
//! (SIGTERM first, so they drain) and then NATS. With `--demo`, also the AMI
//! simulator, generated configs, simulated calls and the demo page (`crate::demo`).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard_bus::{Bus, NatsConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The services `up` runs, with their default HTTP ports.
pub const SERVICES: [(&str, u16); 5] = [
    ("ami-bridge", 8081),
    ("im-bridge", 8082),
    ("ws-push", 8083),
    ("chat-store", 8084),
    ("hook-runner", 8085),
];

const COLOURS: [&str; 6] = ["36", "35", "33", "32", "34", "90"];

/// `switchboard up`
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Use this NATS (>= 2.10, JetStream) instead of starting one.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Port of the nats-server that `up` starts.
    #[arg(long, default_value_t = 14222)]
    pub nats_port: u16,
    /// Where NATS, SQLite and files live.
    #[arg(long, default_value = ".sb-data")]
    pub data_dir: PathBuf,
    /// A folder with `<service>.toml` files to pass as `--config`.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Where the service binaries are (default: next to `switchboard`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Run only these services (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// How long to wait for every service to be ready.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout_secs: u64,
    /// Demo mode: an AMI simulator placing calls, the example rules, and a demo page
    /// (configs generated under the data dir, on top of `--config-dir`; docs/demo.md).
    #[arg(long, conflicts_with = "only")]
    pub demo: bool,
    /// Where the demo page listens (loopback: it hands out demo tokens).
    #[arg(long, default_value = "127.0.0.1:8090", requires = "demo")]
    pub demo_listen: SocketAddr,
    /// Seconds between the demo's simulated calls.
    #[arg(long, default_value_t = 4, requires = "demo")]
    pub demo_call_interval_secs: u64,
}

fn paint(colour: &str, text: &str) -> String {
    if std::io::stderr().is_terminal() {
        format!("\x1b[{colour}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Prints one line of `up`'s own, prefixed, on stderr.
pub(crate) fn say(text: &str) {
    eprintln!("{} {text}", paint("1", "switchboard ▸"));
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

pub(crate) async fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The nats-server `up` started, stopped on drop.
struct LocalNats {
    child: Child,
}

impl LocalNats {
    async fn start(port: u16, data_dir: &Path) -> anyhow::Result<(Self, String)> {
        let binary = find_on_path("nats-server")
            .context("nats-server is not installed: run scripts/install-deps.sh, or pass --nats-url")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            bail!(
                "port {port} is already in use: stop what runs there, pass --nats-port, or use it with --nats-url nats://127.0.0.1:{port}"
            );
        }
        let store = data_dir.join("nats");
        let log = data_dir.join("nats.log");
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        if !wait_for_tcp(addr, Duration::from_secs(10)).await {
            bail!(
                "nats-server did not listen on {addr} within 10 s; see {}",
                log.display()
            );
        }
        say(&format!(
            "nats-server {} started on nats://{addr} (store {}, log {})",
            binary.display(),
            store.display(),
            log.display()
        ));
        Ok((Self { child }, format!("nats://{addr}")))
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Everything one supervised service needs.
struct Supervised {
    name: &'static str,
    binary: PathBuf,
    config: Option<PathBuf>,
    workdir: PathBuf,
    http: SocketAddr,
    nats_url: String,
    colour: &'static str,
}

fn http_addr_from(config: Option<&Path>, default_port: u16) -> SocketAddr {
    let default = SocketAddr::from(([127, 0, 0, 1], default_port));
    let Some(path) = config else { return default };
    let Ok(text) = std::fs::read_to_string(path) else {
        return default;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return default;
    };
    table
        .get("http")
        .and_then(|http| http.get("listen"))
        .and_then(|listen| listen.as_str())
        .and_then(|listen| listen.parse::<SocketAddr>().ok())
        .map(|addr| {
            if addr.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            }
        })
        .unwrap_or(default)
}

/// Runs the stack until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("locating the binaries")?,
    };

    let (local_nats, nats_url) = match &args.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let (nats, url) = LocalNats::start(args.nats_port, &data_dir).await?;
            (Some(nats), url)
        }
    };
    // Checks the version and JetStream, and creates the shared streams once.
    let config = NatsConfig {
        url: nats_url.clone(),
        ..Default::default()
    };
    let bus = Bus::connect(&config, "switchboard-up").await?;
    bus.provision_streams().await?;
    drop(bus);

    let mut config_dir = args.config_dir.clone();
    let demo = if args.demo {
        if !args.demo_listen.ip().is_loopback() {
            bail!("--demo-listen must be a loopback address: the demo page hands out tokens");
        }
        let sim_secret = crate::demo::random_secret();
        let (sim, sim_addr) = crate::demo::start_ami_sim(&bin_dir, "sb", &sim_secret).await?;
        say(&format!("demo: ami-sim listening on {sim_addr}"));
        let xmpp = crate::demo_xmpp::DemoXmpp::start(&data_dir.join("demo")).await?;
        match &xmpp {
            Some(xmpp) => say(&format!(
                "demo: prosody on {} for {}: {} (im-bridge's account main), alice and bob",
                xmpp.addr,
                crate::demo_xmpp::DOMAIN,
                crate::demo_xmpp::BOT
            )),
            None => say(&paint(
                "33",
                "demo: prosody is not installed, so no IM (F2, F3, F7): apt-get install prosody (scripts/up.sh --demo does)",
            )),
        }
        let setup = crate::demo::prepare(
            &data_dir,
            args.config_dir.as_deref(),
            crate::demo::Simulator {
                addr: sim_addr,
                user: "sb",
                secret: &sim_secret,
            },
            xmpp.as_ref(),
            args.demo_listen,
            &SERVICES,
        )?;
        say(&format!(
            "demo: configs with a fresh JWT secret and site API key in {} (readable by you only)",
            setup.config_dir.display()
        ));
        if let Some(fifo) = setup.im_fifo() {
            say(&format!(
                "demo: a shell script can send IM too: echo '/msg main {} hello' > {}",
                crate::demo::IM_USER,
                fifo.display()
            ));
        }
        config_dir = Some(setup.config_dir.clone());
        Some((sim, xmpp, setup))
    } else {
        None
    };

    let mut supervised = Vec::new();
    for (index, (name, port)) in SERVICES.iter().enumerate() {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let binary = bin_dir.join(name);
        if !binary.is_file() {
            bail!(
                "{} not found; build it first: cargo build --bins (or pass --bin-dir)",
                binary.display()
            );
        }
        let config = config_dir
            .as_ref()
            .map(|dir| dir.join(format!("{name}.toml")))
            .filter(|p| p.is_file());
        let workdir = data_dir.join(name);
        std::fs::create_dir_all(&workdir)?;
        supervised.push(Supervised {
            name,
            http: http_addr_from(config.as_deref(), *port),
            binary,
            config,
            workdir,
            nats_url: nats_url.clone(),
            colour: COLOURS[index % COLOURS.len()],
        });
    }

    let shutdown = CancellationToken::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for service in supervised {
        tasks.push(tokio::spawn(supervise(service, shutdown.clone(), ready_tx.clone())));
    }
    drop(ready_tx);
    let expected = tasks.len();

    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        switchboard_runtime::shutdown_signal().await;
        on_signal.cancel();
    });

    let ready_deadline = tokio::time::sleep(Duration::from_secs(args.ready_timeout_secs));
    tokio::pin!(ready_deadline);
    let mut ready = 0;
    let mut all_ready = false;
    while !all_ready {
        tokio::select! {
            Some(name) = ready_rx.recv() => {
                ready += 1;
                say(&format!("{} ready ({ready}/{expected})", paint("32", name)));
                if ready == expected {
                    all_ready = true;
                    say(&format!("all {expected} services ready in {:.1}s; NATS at {nats_url}; Ctrl-C stops everything", started.elapsed().as_secs_f64()));
                    say(&format!("try: switchboard tail --nats-url {nats_url}"));
                }
            }
            _ = &mut ready_deadline => {
                say(&paint("31", &format!("only {ready}/{expected} services ready after {}s; see their logs above", args.ready_timeout_secs)));
                break;
            }
            _ = shutdown.cancelled() => break,
        }
    }
    if let Some((_, _, setup)) = &demo
        && !shutdown.is_cancelled()
    {
        let interval = Duration::from_secs(args.demo_call_interval_secs.max(1));
        match crate::demo::start(setup, nats_url.clone(), interval, shutdown.clone()).await {
            Ok(url) => say(&format!(
                "demo: open {} (a call every {}s to 101 or 102; Ctrl-C stops everything)",
                paint("1", &url),
                interval.as_secs()
            )),
            Err(error) => {
                say(&paint("31", &format!("demo: {error:#}")));
                all_ready = false;
                shutdown.cancel();
            }
        }
    }
    shutdown.cancelled().await;
    say("stopping services…");
    for task in tasks {
        let _ = task.await;
    }
    if let Some((mut sim, xmpp, _)) = demo {
        let _ = sim.kill().await;
        say("demo: ami-sim stopped");
        if let Some(xmpp) = xmpp {
            xmpp.stop().await;
            say("demo: prosody stopped");
        }
    }
    if let Some(nats) = local_nats {
        nats.stop().await;
        say("nats-server stopped");
    }
    say("stopped");
    Ok(if all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn supervise(
    service: Supervised,
    shutdown: CancellationToken,
    ready: tokio::sync::mpsc::UnboundedSender<&'static str>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut announced_ready = false;
    loop {
        let mut command = Command::new(&service.binary);
        if let Some(config) = &service.config {
            command.arg("--config").arg(config);
        }
        command
            .current_dir(&service.workdir)
            .env("SB_NATS__URL", &service.nats_url)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                say(&format!("{}: cannot start: {error}", service.name));
                return;
            }
        };
        let prefix = paint(service.colour, &format!("{:>11} │", service.name));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward(BufReader::new(stdout), prefix.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward(BufReader::new(stderr), prefix.clone()));
        }
        let started = Instant::now();
        let already_ready = announced_ready;
        let probe = async move {
            if already_ready {
                return std::future::pending::<()>().await;
            }
            let url = format!("http://{}/readyz", service.http);
            let client = reqwest::Client::new();
            loop {
                if let Ok(response) = client.get(&url).timeout(Duration::from_secs(1)).send().await
                    && response.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::pin!(probe);
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = &mut probe, if !announced_ready => {
                    announced_ready = true;
                    let _ = ready.send(service.name);
                }
                _ = shutdown.cancelled() => break None,
            }
        };
        match status {
            None => {
                if let Some(pid) = child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                    Ok(_) => say(&format!("{} stopped", service.name)),
                    Err(_) => {
                        let _ = child.kill().await;
                        say(&format!("{} did not stop within 10 s; killed", service.name));
                    }
                }
                return;
            }
            Some(status) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                say(&paint(
                    "31",
                    &format!(
                        "{} exited ({status}); restarting in {:.1}s",
                        service.name,
                        backoff.as_secs_f64()
                    ),
                ));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn forward<R: tokio::io::AsyncRead + Unpin>(reader: BufReader<R>, prefix: String) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{prefix} {line}");
    }
}
