//! Interoperability with an outside implementation: a pynng + msgpack peer
//! written from docs/WIRE.md alone (tests/interop/pynng_peer.py).
//!
//! Needs python3 with pynng and msgpack (scripts/setup.sh installs them).
//! Set CHORUS_SKIP_INTEROP=1 to skip deliberately; otherwise a missing
//! Python side fails the test rather than passing silently.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

use chorus::{Peer, PublishOptions};
use common::*;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Hello {
    n: u32,
    text: String,
}

fn python_available() -> bool {
    if std::env::var_os("CHORUS_SKIP_INTEROP").is_some() {
        eprintln!("CHORUS_SKIP_INTEROP set: skipping the pynng interop test");
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import pynng, msgpack"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with pynng and msgpack is required (run scripts/setup.sh, or set CHORUS_SKIP_INTEROP=1)"
    );
    true
}

fn spawn_python(args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/pynng_peer.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Reads one line from the child on a blocking thread, with a deadline.
async fn line(out: &mut BufReader<ChildStdout>) -> String {
    within("a line from the python peer", async {
        tokio::task::block_in_place(|| {
            let mut l = String::new();
            out.read_line(&mut l).expect("read python stdout");
            assert!(!l.is_empty(), "python peer exited early");
            l.trim_end().to_owned()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publisher_to_chorus_subscriber() {
    if !python_available() {
        return;
    }
    const N: usize = 50;
    let b = fast("rust-sub", "tcp://127.0.0.1:0").start().await.unwrap();
    let mut sub = b.subscribe::<Hello>("interop.>").unwrap();
    let mut joined = b.membership();
    // The Python peer joins through b by answering b's heartbeat surveys.
    let n = N.to_string();
    let (mut child, mut out) = spawn_python(&["publish", "tcp://127.0.0.1:0", b.local_url(), &n]);
    let hello = line(&mut out).await;
    assert!(hello.starts_with("listening tcp://"), "{hello}");
    let e = next("python peer joins", &mut joined).await;
    assert_eq!(e.kind, chorus::MemberEventKind::Joined);
    assert_eq!(e.member.name(), "pynng-publisher");
    for i in 0..N as u32 {
        let d = next("python message", &mut sub).await;
        assert_eq!(
            d.value,
            Hello {
                n: i,
                text: format!("hello {i}")
            }
        );
        assert_eq!(d.seq(), 1 + 2 * i as u64, "seq from python");
        assert_eq!(d.origin().0, 0x5EED_0000_0000_0001);
        assert_eq!(d.id(), Some(format!("py-{i}").as_str()));
        assert_eq!(d.correlation_id(), Some("py-flow"));
        assert_eq!(d.headers()["lang"], "python");
    }
    assert_eq!(line(&mut out).await, "sent");
    // The bad frames interleaved after each valid one are all accounted for.
    wait_for("every frame counted", || b.stats().received == 5 * N as u64).await;
    // Payloads are decoded as the stream is read: read past the last one.
    assert!(sub.next().now_or_never().is_none(), "no valid message left");
    let s = b.stats();
    assert_eq!(s.delivered, N as u64, "{s:?}");
    assert_eq!(s.malformed, 2 * N as u64, "garbage + invalid topic: {s:?}");
    assert_eq!(s.unsupported, N as u64, "wrong version: {s:?}");
    assert_eq!(s.undecodable, N as u64, "{s:?}");
    child.stdin.take().unwrap().write_all(b"done\n").unwrap();
    assert!(child.wait().unwrap().success());
    within("shutdown", b.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chorus_publisher_to_python_subscriber() {
    if !python_available() {
        return;
    }
    const N: usize = 20;
    let a = Peer::builder().name("rust-pub").start().await.unwrap();
    let n = N.to_string();
    let (mut child, mut out) = spawn_python(&["subscribe", &a.info().endpoints.publish, &n]);
    assert_eq!(line(&mut out).await, "ready");
    wait_for("python subscriber link", || a.stats().links_out == 1).await;
    for i in 0..N as u32 {
        let opts = PublishOptions::new()
            .id(format!("rs-{i}"))
            .correlation_id("rs-flow")
            .header("lang", "rust");
        a.publish_with(
            "interop.rs",
            &Hello {
                n: i,
                text: format!("hi {i}"),
            },
            opts,
        )
        .await
        .unwrap();
    }
    for i in 0..N as u64 {
        let v: serde_json::Value = serde_json::from_str(&line(&mut out).await).unwrap();
        assert_eq!(v["origin"], a.id().0);
        assert_eq!(v["incarnation"], a.incarnation());
        assert_eq!(v["seq"], i + 1);
        assert_eq!(v["id"], format!("rs-{i}"));
        assert_eq!(v["topic"], "interop.rs");
        assert_eq!(v["correlation_id"], "rs-flow");
        assert_eq!(v["headers"]["lang"], "rust");
        assert_eq!(v["value"]["n"], i);
        assert_eq!(v["value"]["text"], format!("hi {i}"));
        assert!(v["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000);
    }
    assert!(child.wait().unwrap().success());
    within("shutdown", a.shutdown()).await;
}
