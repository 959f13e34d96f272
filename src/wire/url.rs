//! Endpoint addresses: what a URL in a heartbeat or a setting may be.
//!
//! Owns: the syntax check of the tcp, ipc and inproc URLs chorus listens on,
//! dials and advertises, and the derivation of a peer's other endpoints from
//! its public address. Pure string work: no socket, no resolver.

use crate::error::{Error, Result};

/// Checks that `url` is a tcp, ipc or inproc URL NNG can use.
pub(crate) fn validate_url(url: &str) -> Result<()> {
    let bad = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(rest) = url.strip_prefix("tcp://") {
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        port.parse::<u16>()
            .map_err(|_| bad("port is not a number 0-65535"))?;
        Ok(())
    } else if let Some(rest) = url
        .strip_prefix("ipc://")
        .or_else(|| url.strip_prefix("inproc://"))
    {
        if rest.is_empty() {
            return Err(bad("missing path or name"));
        }
        Ok(())
    } else {
        Err(bad("unsupported scheme"))
    }
}

/// The URL of a second endpoint derived from a peer's public URL: tcp gets a
/// free port on the same host, ipc and inproc get a suffix.
pub(crate) fn derive_url(public: &str, suffix: &str) -> String {
    match public
        .strip_prefix("tcp://")
        .and_then(|r| r.rsplit_once(':'))
    {
        Some((host, _)) => format!("tcp://{host}:0"),
        None => format!("{public}.{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_validation() {
        for ok in [
            "tcp://127.0.0.1:0",
            "tcp://[::1]:5555",
            "ipc:///tmp/x.sock",
            "inproc://a",
        ] {
            validate_url(ok).unwrap();
        }
        for bad in [
            "",
            "http://x",
            "tcp://127.0.0.1",
            "tcp://:80",
            "tcp://h:99999",
            "inproc://",
        ] {
            let e = validate_url(bad).unwrap_err().to_string();
            assert!(e.contains("expected tcp://"), "{e}");
        }
    }
}
