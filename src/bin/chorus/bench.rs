//! `chorus bench`: the throughput benchmark (`chorus::bench`, the engine
//! `cargo bench --bench throughput` runs too) from the command line.

use anyhow::{anyhow, Result};

pub use chorus::bench::Args;

pub fn run(args: Args) -> Result<()> {
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    chorus::bench::main(&args, chorus::bench::Mode::Full, vec![exe, "bench".into()])
        .map_err(|e| anyhow!(e))?;
    Ok(())
}
