//! The bus tools: `tail`, `pub`, `req`, `streams`, `health`.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use switchboard_bus::command::STATUS_HEADER;
use switchboard_bus::{Bus, CloudEvent, NatsConfig};
use time::format_description::well_known::Rfc3339;

use crate::LOCAL_NATS_URL;

/// Where the bus is.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// NATS URL (default: the `switchboard up` server).
    #[arg(long, env = "SB_NATS__URL", default_value = LOCAL_NATS_URL)]
    pub nats_url: String,
    /// Subject prefix.
    #[arg(long, env = "SB_NATS__PREFIX", default_value = "sb")]
    pub prefix: String,
}

impl ConnectArgs {
    async fn bus(&self) -> anyhow::Result<Bus> {
        let config = NatsConfig {
            url: self.nats_url.clone(),
            prefix: self.prefix.clone(),
            ..Default::default()
        };
        Ok(Bus::connect(&config, "switchboard-cli").await?)
    }
}

/// `switchboard tail`
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Subject or wildcard (default `<prefix>.evt.>`).
    pub subject: Option<String>,
    /// One JSON object per line instead of the pretty form.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many messages.
    #[arg(long)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `switchboard pub`
#[derive(Debug, clap::Args)]
pub struct PubArgs {
    /// The subject, e.g. `sb.push.user.101`.
    pub subject: String,
    /// JSON data; `-` reads stdin.
    pub data: String,
    /// CloudEvents type.
    #[arg(long = "type", default_value = "switchboard.cli.v1")]
    pub ty: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `switchboard req`
#[derive(Debug, clap::Args)]
pub struct ReqArgs {
    /// The command subject, e.g. `sb.cmd.push.presence`.
    pub subject: String,
    /// JSON request body; `-` reads stdin.
    #[arg(default_value = "{}")]
    pub data: String,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 5s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" | "" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("{text:?} is not a duration like 5s or 500ms")),
    }
}

fn read_json_arg(data: &str) -> anyhow::Result<serde_json::Value> {
    let text = if data == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        data.to_owned()
    };
    serde_json::from_str(&text).with_context(|| format!("data is not JSON: {text}"))
}

/// Prints live messages.
pub async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let bus = args.connect.bus().await?;
    let subject = args.subject.unwrap_or_else(|| bus.subjects().all_events());
    let mut subscriber = bus.client().subscribe(subject.clone()).await?;
    if !args.json {
        eprintln!("listening on {subject} at {} (Ctrl-C to stop)", args.connect.nats_url);
    }
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    while let Some(message) = subscriber.next().await {
        let line = render_message(&message, args.json);
        writeln!(out, "{line}")?;
        out.flush()?;
        seen += 1;
        if args.limit.is_some_and(|limit| seen >= limit) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn render_message(message: &async_nats::Message, json: bool) -> String {
    let data: serde_json::Value = serde_json::from_slice(&message.payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned()));
    let event = CloudEvent::from_message(message.headers.as_ref(), message.payload.clone()).ok();
    if json {
        let mut object = serde_json::json!({ "subject": message.subject.as_str(), "data": data });
        if let Some(event) = &event {
            object["id"] = event.id.clone().into();
            object["source"] = event.source.clone().into();
            object["type"] = event.ty.clone().into();
            if let Some(time) = event.time.and_then(|t| t.format(&Rfc3339).ok()) {
                object["time"] = time.into();
            }
            if let Some(subject) = &event.subject {
                object["ce_subject"] = subject.clone().into();
            }
            for (name, value) in &event.extensions {
                object[name] = value.clone().into();
            }
        }
        return object.to_string();
    }
    let mut line = format!("{}", message.subject);
    match &event {
        Some(event) => {
            let time = event.time.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default();
            line.push_str(&format!(
                "\n  type={} source={} id={} time={time}",
                event.ty, event.source, event.id
            ));
            if let Some(subject) = &event.subject {
                line.push_str(&format!(" subject={subject}"));
            }
        }
        None => line.push_str("\n  (not a CloudEvent)"),
    }
    line.push_str(&format!("\n  {data}"));
    line
}

/// Publishes one CloudEvent.
pub async fn publish(args: PubArgs) -> anyhow::Result<ExitCode> {
    let bus = args.connect.bus().await?;
    let data = read_json_arg(&args.data)?;
    let event = bus.event(&args.ty, &data)?;
    let prefix = bus.subjects().prefix();
    let stored =
        args.subject.starts_with(&format!("{prefix}.evt.")) || args.subject.starts_with(&format!("{prefix}.push."));
    if stored {
        let ack = bus.publish(args.subject.clone(), &event).await?;
        println!(
            "published {} to {} as {} #{}",
            event.id, args.subject, ack.stream, ack.sequence
        );
    } else {
        bus.publish_ephemeral(args.subject.clone(), &event).await?;
        bus.client().flush().await?;
        println!("published {} to {} (core NATS)", event.id, args.subject);
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends one command and prints the reply.
pub async fn request(args: ReqArgs) -> anyhow::Result<ExitCode> {
    let bus = args.connect.bus().await?;
    let body = read_json_arg(&args.data)?;
    let reply = bus
        .request_raw(
            &args.subject,
            Bytes::from(serde_json::to_vec(&body)?),
            Some(args.timeout),
        )
        .await?;
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(STATUS_HEADER))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| "ok".to_owned());
    let pretty = serde_json::from_slice::<serde_json::Value>(&reply.payload)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(&reply.payload).into_owned());
    println!("{pretty}");
    if status == "error" {
        eprintln!("switchboard: {} answered with an error", args.subject);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists streams and buckets.
pub async fn streams(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let bus = args.bus().await?;
    let mut list = bus.jetstream().streams();
    let mut rows = Vec::new();
    while let Some(info) = list.next().await {
        let info = info?;
        let kind = if info.config.name.starts_with("KV_") {
            "kv"
        } else {
            "stream"
        };
        rows.push([
            kind.to_owned(),
            info.config.name.clone(),
            info.config.subjects.join(","),
            info.state.messages.to_string(),
            info.state.bytes.to_string(),
            format!("{}..{}", info.state.first_sequence, info.state.last_sequence),
            info.state.consumer_count.to_string(),
            format!("{:?}", info.config.max_age),
        ]);
    }
    rows.sort();
    let header = [
        "kind",
        "name",
        "subjects",
        "messages",
        "bytes",
        "sequences",
        "consumers",
        "max_age",
    ];
    print_table(&header, &rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(header.to_vec()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// GETs a URL; exit 0 on 200.
pub async fn health(url: &str) -> anyhow::Result<ExitCode> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if response.status() == reqwest::StatusCode::OK {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("switchboard: {url} answered {}", response.status());
        Ok(ExitCode::FAILURE)
    }
}
