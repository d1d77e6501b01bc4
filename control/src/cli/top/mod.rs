//! `outrigger top`: a live view of any running mesh, given only its control plane. The control
//! plane lists the sidecars with their admin addresses; each one's `/metrics` and `/stats`
//! become the same per-service table as `outrigger up`, above a table of the sidecars' sync
//! state. On a terminal it redraws in place (keys only, no mouse, so it works over SSH);
//! otherwise, or with `--plain`, it prints plain text, one timestamped snapshot per interval.

mod mesh;
mod view;

use super::client::Client;
use super::up::table::Row;
use mesh::Mesh;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Time between looks at the mesh; rates are over this time.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = positive_duration)]
    pub interval: Duration,
    /// Plain text, one timestamped snapshot per interval, even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Print one snapshot as plain text (rates over one interval) and exit; exit 1 if the
    /// control plane cannot be reached.
    #[arg(long)]
    pub once: bool,
    /// The column rows are sorted by (on a terminal, `s` changes it).
    #[arg(long, value_enum, default_value_t = SortBy::Service)]
    pub sort: SortBy,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err("must be at least 100ms".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Service,
    /// Busiest first.
    Rps,
    /// Worst first.
    Success,
    /// Slowest first.
    P99,
    /// Most first.
    Retries,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            Self::Service => Self::Rps,
            Self::Rps => Self::Success,
            Self::Success => Self::P99,
            Self::P99 => Self::Retries,
            Self::Retries => Self::Service,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Rps => "req/s",
            Self::Success => "success",
            Self::P99 => "p99",
            Self::Retries => "retries",
        }
    }

    fn apply(self, rows: &mut [Row]) {
        // Ties keep the service order, so rows do not jump around between redraws.
        rows.sort_by(|a, b| a.service.cmp(&b.service));
        match self {
            Self::Service => {}
            Self::Rps => rows.sort_by(|a, b| b.rps.total_cmp(&a.rps)),
            Self::Success => rows.sort_by(|a, b| a.success_rate.total_cmp(&b.success_rate)),
            Self::P99 => rows.sort_by(|a, b| b.p99_ms.total_cmp(&a.p99_ms)),
            Self::Retries => rows.sort_by_key(|r| std::cmp::Reverse(r.retries)),
        }
    }
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let url = client.url();
    let mut mesh = Mesh::new(client);
    if args.once {
        let frame = loop {
            if let Some(f) = mesh.look().await? {
                break f;
            }
            tokio::time::sleep(args.interval).await;
        };
        let mut out = std::io::stdout().lock();
        write!(out, "{}", frame.text(args.sort))?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.plain || !std::io::stdout().is_terminal() {
        return plain(&mut mesh, url, &args).await;
    }
    view::run(&mut mesh, url, &args).await
}

/// Plain text for pipes and logs: no escape codes, each snapshot under a timestamp line. An
/// unreachable control plane is reported and retried; a closed pipe ends it quietly.
async fn plain(mesh: &mut Mesh<'_>, url: &str, args: &Args) -> anyhow::Result<ExitCode> {
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match mesh.look().await {
            Ok(Some(frame)) => frame.text(args.sort),
            Ok(None) => continue,
            Err(e) => format!("error: {e:#} (retrying every {})\n", fmt(args.interval)),
        };
        let mut out = std::io::stdout().lock();
        let written = write!(out, "--- {} {url}\n{text}\n", stamp()).and_then(|()| out.flush());
        if written.is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn stamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_puts_the_worst_first_and_cycles() {
        let row = |service: &str, rps: f64, success_rate: f64| Row {
            service: service.into(),
            rps,
            success_rate,
            ..Row::default()
        };
        let mut rows = vec![row("b", 1.0, 0.5), row("a", 9.0, 1.0), row("c", 5.0, 0.9)];
        let order = |rows: &[Row]| rows.iter().map(|r| r.service.clone()).collect::<String>();
        SortBy::Service.apply(&mut rows);
        assert_eq!(order(&rows), "abc");
        SortBy::Rps.apply(&mut rows);
        assert_eq!(order(&rows), "acb");
        SortBy::Success.apply(&mut rows);
        assert_eq!(order(&rows), "bca");
        let mut s = SortBy::Service;
        for _ in 0..5 {
            s = s.next();
        }
        assert_eq!(s, SortBy::Service);
    }

    #[test]
    fn intervals_are_durations_of_at_least_100ms() {
        assert_eq!(positive_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("soon").is_err());
    }
}
