//! The examples run as part of the test suite (cargo builds them for `cargo test`).

mod common;

use common::built_example;

use std::process::Command;

#[test]
fn quickstart_runs_and_delivers() {
    let out = Command::new(built_example("quickstart")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("work-orders received BidAccepted"),
        "{stdout}"
    );
}

#[test]
fn discovery_demo_kills_detects_and_rejoins() {
    // Five `heartbeat` processes; the demo exits non-zero if a step misses its bound.
    let out = Command::new(built_example("discovery_demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "discovery demo failed:\n{stdout}");
    for expected in [
        "SIGKILL peer-3",
        "event Failed peer-3",
        "event Rejoined peer-3",
        "event Left peer-5",
        "result: OK",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn choreography_observer_reports_exactly_the_injected_missing_work_order() {
    let out = Command::new(built_example("choreography"))
        .args(["--bids", "30", "--drop", "7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "choreography failed:\n{stdout}");
    for expected in [
        "MISSING work.created for bid-7",
        "invoices.issued  29",
        "observer: 1 observation(s), missing: [\"bid-7\"]",
        "result: OK",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn durable_restart_invoices_every_bid_once_across_restarts() {
    let out = Command::new(built_example("durable_restart"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "durable_restart failed:\n{stdout}");
    assert!(stdout.contains("result: OK — 12 invoices"), "{stdout}");
}

#[test]
fn work_order_replicas_turn_every_bid_into_one_work_order_across_a_kill() {
    let out = Command::new(built_example("work_order_replicas"))
        .args(["--bids", "45"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "work_order_replicas failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "SIGKILL of replica",
        "45 bids, 45 with a work order, 45 exactly once",
        "every bid became exactly one work order",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
