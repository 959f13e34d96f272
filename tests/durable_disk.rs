//! A full disk under a durable publisher: `publish` (or `flush`) fails with
//! a clear `Error::Store` that says the disk is full, nothing already in
//! the log is lost, and publishing resumes by itself once there is room.
//!
//! Needs root (it mounts a small tmpfs for the data dir); skipped with a
//! message without it.

mod common;

use std::process::Command;
use std::time::Duration;

use chorus::{Error, Fsync, StartAt};
use common::*;

/// A tmpfs of `mb` MiB at a new directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mb: u32) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a peer that failed the test may still hold files there.
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publish_clearly_and_loses_nothing_already_logged() {
    // 160 MiB, of which a filler takes 80: the log gets about 16 MiB before
    // the 64 MiB reserve is reached.
    let disk = match Tmpfs::mount(160) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: cannot mount a tmpfs (needs root): {e}");
            return;
        }
    };
    let filler = disk.0.path().join("filler");
    std::fs::write(&filler, vec![1u8; 80 << 20]).unwrap();
    let path = disk.0.path().join("a");
    let a = fast("a", &unique_url("inproc", "fa"))
        .data_dir(&path)
        .fsync(Fsync::OsBuffered)
        .start()
        .await
        .unwrap();
    // Publish 1 KiB events, flushing every 100, until the disk refuses.
    let payload = vec![7u8; 1024];
    let (mut flushed, mut n, mut refused) = (0u32, 0u32, None);
    while refused.is_none() && n < 200_000 {
        let mut v = payload.clone();
        v[..4].copy_from_slice(&(n + 1).to_be_bytes());
        match a.publish_bytes("t", v).await {
            Ok(()) => n += 1,
            Err(e) => refused = Some(e),
        }
        if n.is_multiple_of(100) && refused.is_none() {
            match a.flush(DEADLINE).await {
                Ok(()) => flushed = n,
                Err(e) => refused = Some(e),
            }
        }
    }
    let e = refused.expect("the disk never filled up");
    match &e {
        Error::Store(s) => assert!(s.is_disk_full(), "{e}"),
        other => panic!("expected Error::Store, got {other}"),
    }
    wait_for("the failed append counted", || {
        a.stats().log_append_failures > 0
    })
    .await;
    assert!(flushed > 1000, "only {flushed} events fit");
    eprintln!("the disk filled up after {flushed} flushed events: {e}");

    // Room again: the log is written again (retried every second).
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = false;
    for _ in 0..100 {
        if a.publish_bytes("t", payload.clone()).await.is_ok() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "publishing did not resume once there was room");
    a.flush(DEADLINE).await.unwrap();
    a.shutdown().await;

    // Nothing that was flushed is missing from the log: a durable consumer
    // from the beginning reads it all back.
    let a = fast("a", &unique_url("inproc", "fa2"))
        .data_dir(&path)
        .start()
        .await
        .unwrap();
    let cdir = tempfile::tempdir().unwrap();
    let c = fast("c", &unique_url("inproc", "fc"))
        .data_dir(cdir.path())
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let got = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = got.clone();
    let opts = chorus::HandlerOptions::new()
        .durable("check")
        .start_at(StartAt::Beginning);
    let _h = c
        .subscribe_bytes_with_options("t", opts, move |d: chorus::Delivery<bytes::Bytes>| {
            let log = log.clone();
            async move {
                let n = u32::from_be_bytes(d.value[..4].try_into().unwrap());
                log.lock().push(n);
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .unwrap();
    wait_for("the log read back", || got.lock().len() as u32 >= flushed).await;
    let got = got.lock().clone();
    assert_eq!(
        &got[..flushed as usize],
        &(1..=flushed).collect::<Vec<_>>()[..]
    );
    assert_eq!(c.stats().lost, 0);
    c.shutdown().await;
    a.shutdown().await;
}
