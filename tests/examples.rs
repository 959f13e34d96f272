//! The examples run as part of the test suite (cargo builds them for `cargo test`).

use std::path::PathBuf;
use std::process::Command;

/// Path of a built example, next to this test binary's directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run through `cargo test`",
        path.display()
    );
    path
}

#[test]
fn quickstart_runs_and_delivers() {
    let out = Command::new(example("quickstart")).output().unwrap();
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
