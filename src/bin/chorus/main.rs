//! `chorus`: the bus from the shell — run a node, publish, subscribe, list
//! members, benchmark.
//!
//! ```sh
//! chorus node --name a --listen tcp://127.0.0.1:7000
//! chorus sub 'orders.>' --seed tcp://127.0.0.1:7000
//! chorus pub orders.created --seed tcp://127.0.0.1:7000 '{"id": 7}' --json
//! chorus members --seed tcp://127.0.0.1:7000
//! chorus bench --quick
//! ```
//!
//! Errors are one line on stderr and a non-zero exit code (2 for bad
//! arguments, 1 for everything else).

mod bench;
mod join;
mod members;
mod node;
mod payload;
mod publish;
mod request;
mod subscribe;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "Brokerless messaging between peer services, from the shell",
    long_about = "Brokerless messaging between peer services, from the shell.\n\n\
        Every command except `bench` joins the bus as a peer of its own (through --seed), \
        does its work and leaves gracefully.\n\
        Payloads: `pub` sends DATA as raw bytes (UTF-8 text as given) unless --json, which \
        parses DATA as JSON and sends it as MessagePack, the encoding of the library's typed \
        `publish`. `sub` prints MessagePack payloads as JSON, text as text, anything else as hex.\n\
        Logs (to stderr) are controlled by RUST_LOG, e.g. RUST_LOG=chorus=debug."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join the bus and print membership events as they happen.
    Node(node::Args),
    /// Publish one message, or one per line of stdin (DATA `-`).
    Pub(publish::Args),
    /// Print every delivery matching a topic pattern.
    Sub(subscribe::Args),
    /// Send one request and print its reply (served by `Peer::serve`).
    Req(request::Args),
    /// Print the member table (live with --watch).
    Members(members::Args),
    /// Measure throughput and latency against raw NNG (the `throughput` bench).
    Bench(bench::Args),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return;
        }
        Err(e) => {
            eprintln!(
                "chorus: {} (see chorus --help)",
                usage_error(&e.to_string())
            );
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "chorus=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        command => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async {
                    match command {
                        Command::Node(a) => node::run(a).await,
                        Command::Pub(a) => publish::run(a).await,
                        Command::Sub(a) => subscribe::run(a).await,
                        Command::Req(a) => request::run(a).await,
                        Command::Members(a) => members::run(a).await,
                        Command::Bench(_) => unreachable!("run above"),
                    }
                })
            }),
    };
    if let Err(e) = result {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("chorus: error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

/// clap's error as one line: its first line, and the arguments it names
/// on the lines after (a missing required argument is named there).
fn usage_error(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let named: Vec<&str> = lines
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    if named.is_empty() {
        first.to_owned()
    } else {
        format!("{first} {}", named.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_argument_is_named() {
        let e = Cli::try_parse_from(["chorus", "pub"]).unwrap_err();
        let line = usage_error(&e.to_string());
        assert!(line.contains("<TOPIC>"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        let e = Cli::try_parse_from(["chorus", "sub", "--bogus"]).unwrap_err();
        assert!(usage_error(&e.to_string()).starts_with("unexpected argument"));
    }
}
