//! Durable streams: a peer with a data dir is the log of its own stream.
//! Restarts continue the stream, repair reads what the retransmit buffer
//! evicted from the log, and a data dir is one process's at a time.

mod common;

use futures::{FutureExt, StreamExt};

use chorus::faults::LinkFaults;
use chorus::{Error, Peer, PeerId};
use common::*;

fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("chorus-durable-")
        .tempdir()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_durable_publisher_continues_its_stream() {
    let dir = data_dir();
    let path = dir.path().join("a");
    let b = peer("b", &unique_url("inproc", "b")).await.unwrap();
    let mut sub = b.subscribe::<u32>("t").unwrap();
    let mut losses = b.losses();

    let a = fast("a", &unique_url("inproc", "a"))
        .data_dir(&path)
        .seed(b.local_url())
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    let (id, epoch) = (a.id(), a.incarnation());
    for i in 1..=50u32 {
        a.publish("t", &i).await.unwrap();
    }
    a.flush(DEADLINE).await.unwrap();
    a.shutdown().await;

    // Same data dir, new address: the same peer and the same stream.
    let a = fast("a", &unique_url("inproc", "a2"))
        .data_dir(&path)
        .seed(b.local_url())
        .start()
        .await
        .unwrap();
    assert_eq!(a.id(), id);
    wait_for("b to see a again", || {
        b.members()
            .iter()
            .any(|m| m.id() == id && m.state.is_live() && m.info.incarnation != epoch)
    })
    .await;
    a.wait_for_members(1, DEADLINE).await.unwrap();
    for i in 51..=100u32 {
        a.publish("t", &i).await.unwrap();
    }
    a.flush(DEADLINE).await.unwrap();
    for i in 1..=100u32 {
        let d = next("event", &mut sub).await;
        assert_eq!((d.value, d.seq(), d.origin()), (i, u64::from(i), id));
        assert!(!d.redelivered(), "event {i} marked redelivered");
    }
    assert!(
        losses.next().now_or_never().is_none(),
        "a loss was reported"
    );
    assert_eq!(b.stats().lost, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_a_member_was_cut_off_come_from_the_log() {
    // A buffer of 16 envelopes, a receiver that drops 40 % of frames and
    // whose subscription (256 deliveries, unread until everything is
    // published) stops its receive path: the origin cuts it off after its
    // stall limit and goes on; most repairs ask for what the buffer evicted
    // long ago.
    let dir = data_dir();
    let a = fast("a", &unique_url("inproc", "ra"))
        .data_dir(dir.path().join("a"))
        .retransmit_buffer(16)
        .batch_bytes(0)
        .start()
        .await
        .unwrap();
    let b = fast("b", &unique_url("inproc", "rb"))
        .seed(a.local_url())
        .subscription_buffer(256)
        .link_faults(LinkFaults {
            drop: 0.4,
            ..Default::default()
        })
        .start()
        .await
        .unwrap();
    wait_mesh(&[&a, &b]).await;
    let mut sub = b.subscribe::<u32>("t").unwrap();
    for i in 1..=2000u32 {
        a.publish("t", &i).await.unwrap();
    }
    for i in 1..=2000u32 {
        assert_eq!(next("event", &mut sub).await.value, i);
    }
    assert_eq!(b.stats().lost, 0);
    assert!(a.stats().members_cut_off >= 1, "{:?}", a.stats());
    assert!(a.stats().log_reads > 100, "{:?}", a.stats());
    assert_eq!(a.stats().log_events, 2000);
    assert!(a.stats().retransmit_buffer <= 16);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_data_dir_is_one_peers_at_a_time() {
    let dir = data_dir();
    let a = fast("a", &unique_url("inproc", "la"))
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let e = fast("b", &unique_url("inproc", "lb"))
        .data_dir(dir.path())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Store(_)), "{e}");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    let id = a.id();
    a.shutdown().await;
    // Free again once the first is gone; a contradicting id is refused.
    let e = fast("a", &unique_url("inproc", "lc"))
        .data_dir(dir.path())
        .id(PeerId(id.0 ^ 1))
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("belongs to peer"), "{e}");
    let again = fast("a", &unique_url("inproc", "ld"))
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    assert_eq!(again.id(), id);
    again.shutdown().await;
}

#[tokio::test]
async fn a_directory_with_other_files_is_refused_and_left_alone() {
    let dir = data_dir();
    std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
    let e = Peer::builder()
        .listen(unique_url("inproc", "fa"))
        .data_dir(dir.path())
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a chorus data dir"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "keep me"
    );
}

/// What a handler processed: (value, redelivered).
type Seen = std::sync::Arc<parking_lot::Mutex<Vec<(u32, bool)>>>;

fn durable_handler(
    peer: &Peer,
    name: &str,
    start: chorus::StartAt,
) -> chorus::Result<(chorus::Handler, Seen)> {
    let seen: Seen = Default::default();
    let log = seen.clone();
    let opts = chorus::HandlerOptions::new().durable(name).start_at(start);
    let h = peer.subscribe_with_options("t", opts, move |d: chorus::Delivery<u32>| {
        let log = log.clone();
        async move {
            log.lock().push((d.value, d.redelivered()));
            Ok::<(), std::convert::Infallible>(())
        }
    })?;
    Ok((h, seen))
}

fn values(seen: &Seen) -> Vec<u32> {
    seen.lock().iter().map(|(v, _)| *v).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_gets_what_was_published_while_it_was_down() {
    let dir = data_dir();
    let a = fast("a", &unique_url("inproc", "da"))
        .data_dir(dir.path().join("a"))
        .start()
        .await
        .unwrap();
    let c_dir = dir.path().join("c");
    let c = fast("c", &unique_url("inproc", "dc"))
        .data_dir(&c_dir)
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let (_h, seen) = durable_handler(&c, "invoicing", chorus::StartAt::New).unwrap();
    wait_mesh(&[&a, &c]).await;
    for i in 1..=50u32 {
        a.publish("t", &i).await.unwrap();
    }
    wait_for("c handled 50", || seen.lock().len() == 50).await;
    c.shutdown().await;

    // Published while the consumer is down.
    for i in 51..=120u32 {
        a.publish("t", &i).await.unwrap();
    }
    let c = fast("c", &unique_url("inproc", "dc2"))
        .data_dir(&c_dir)
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let (_h, again) = durable_handler(&c, "invoicing", chorus::StartAt::New).unwrap();
    let mut plain = c.subscribe::<u32>("t").unwrap();
    wait_for("c handled what it missed", || again.lock().len() >= 70).await;
    assert_eq!(values(&again), (51..=120).collect::<Vec<_>>());
    assert!(
        again.lock().iter().all(|(_, r)| !r),
        "a graceful stop leaves no tail"
    );
    // Live traffic follows, to both; the plain subscription never saw the replay.
    c.wait_for_members(1, DEADLINE).await.unwrap();
    a.wait_for_members(1, DEADLINE).await.unwrap();
    for i in 121..=125u32 {
        a.publish("t", &i).await.unwrap();
    }
    wait_for("live events", || again.lock().len() == 75).await;
    assert_eq!(values(&again), (51..=125).collect::<Vec<_>>());
    let first_plain = next("plain delivery", &mut plain).await.value;
    assert!(
        first_plain > 120,
        "the plain subscription got replayed event {first_plain}"
    );
    assert!(c.stats().replayed >= 70, "{:?}", c.stats());
    assert_eq!(c.stats().lost, 0);
    c.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_durable_consumer_can_start_at_the_beginning_or_at_a_time() {
    let dir = data_dir();
    let a = fast("a", &unique_url("inproc", "ba"))
        .data_dir(dir.path().join("a"))
        .start()
        .await
        .unwrap();
    for i in 1..=30u32 {
        a.publish("t", &i).await.unwrap();
    }
    a.flush(DEADLINE).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await; // distinct timestamps
    let middle = std::time::SystemTime::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for i in 31..=40u32 {
        a.publish("t", &i).await.unwrap();
    }
    a.flush(DEADLINE).await.unwrap();
    let c = fast("c", &unique_url("inproc", "bc"))
        .data_dir(dir.path().join("c"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let (_b, all) = durable_handler(&c, "audit", chorus::StartAt::Beginning).unwrap();
    let (_t, recent) = durable_handler(&c, "recent", chorus::StartAt::Time(middle)).unwrap();
    let (_n, new) = durable_handler(&c, "new", chorus::StartAt::New).unwrap();
    wait_for("the whole stream", || all.lock().len() == 40).await;
    wait_for("the recent part", || recent.lock().len() == 10).await;
    assert_eq!(values(&all), (1..=40).collect::<Vec<_>>());
    assert_eq!(values(&recent), (31..=40).collect::<Vec<_>>());
    c.wait_for_members(1, DEADLINE).await.unwrap();
    a.wait_for_members(1, DEADLINE).await.unwrap();
    a.publish("t", &41u32).await.unwrap();
    wait_for("the live event", || {
        new.lock().len() == 1 && all.lock().len() == 41
    })
    .await;
    assert_eq!(values(&new), [41]);
    c.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_durable_consumer_needs_a_data_dir_and_a_unique_name() {
    let p = fast("p", &unique_url("inproc", "na"))
        .start()
        .await
        .unwrap();
    let e = durable_handler(&p, "x", chorus::StartAt::New).unwrap_err();
    assert!(e.to_string().contains("needs a data dir"), "{e}");
    p.shutdown().await;
    let dir = data_dir();
    let p = fast("p", &unique_url("inproc", "nb"))
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let _h = durable_handler(&p, "x", chorus::StartAt::New).unwrap();
    let e = durable_handler(&p, "x", chorus::StartAt::New).unwrap_err();
    assert!(e.to_string().contains("already subscribed"), "{e}");
    let e = durable_handler(&p, "", chorus::StartAt::New).unwrap_err();
    assert!(e.to_string().contains("1 to 200 bytes"), "{e}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_retention_trimmed_before_a_durable_consumer_came_back_is_a_loss() {
    // A log that keeps one segment (a 1-byte bound trims all older ones).
    let dir = data_dir();
    let a = fast("a", &unique_url("inproc", "ta"))
        .data_dir(dir.path().join("a"))
        .fsync(chorus::Fsync::OsBuffered)
        .retention(1, std::time::Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let c_dir = dir.path().join("c");
    let c = fast("c", &unique_url("inproc", "tc"))
        .data_dir(&c_dir)
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let (_h, seen) = durable_handler(&c, "audit", chorus::StartAt::New).unwrap();
    wait_mesh(&[&a, &c]).await;
    for i in 1..=10u32 {
        a.publish("t", &i).await.unwrap();
    }
    wait_for("the first ten", || seen.lock().len() == 10).await;
    wait_for("a to know the durable consumer", || {
        a.stats().durable_readers == 1
    })
    .await;
    c.shutdown().await;
    // Two segments' worth while it is down: the first one is trimmed.
    let total = 140_000u32;
    for i in 11..=total {
        a.publish("t", &i).await.unwrap();
    }
    a.flush(DEADLINE).await.unwrap();
    // Until only the newest segment is left (upkeep may have trimmed the
    // first one while publishing, and trims the next one later).
    wait_for("retention to trim all but the newest segment", || {
        a.stats().log_segments == 1 && a.stats().log_events < u64::from(total - 10)
    })
    .await;
    let kept_from = u64::from(total) - a.stats().log_events + 1;

    let c = fast("c", &unique_url("inproc", "tc2"))
        .data_dir(&c_dir)
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let mut losses = c.losses();
    let (_h, again) = durable_handler(&c, "audit", chorus::StartAt::New).unwrap();
    // Reported as it is reached (a window at a time), in order, all of it.
    let mut lost_through = 10;
    while lost_through < kept_from - 1 {
        let loss = next("the loss", &mut losses).await;
        assert_eq!((loss.origin, loss.first), (a.id(), lost_through + 1));
        lost_through = loss.last;
    }
    assert_eq!(lost_through, kept_from - 1);
    wait_for("the rest of the stream", || {
        again.lock().last().is_some_and(|(v, _)| *v == total)
    })
    .await;
    let got = values(&again);
    assert!(
        got == (kept_from as u32..=total).collect::<Vec<_>>(),
        "{} events from {:?} to {:?}, expected {kept_from}..={total}",
        got.len(),
        got.first(),
        got.last()
    );
    assert_eq!(c.stats().lost, kept_from - 11);
    // The origin counted the same events, as trimmed before they were processed.
    assert_eq!(a.stats().trimmed_unprocessed, kept_from - 11);
    c.shutdown().await;
    a.shutdown().await;
}

/// The age bound waits for the durable consumers the origin remembers
/// (heard of within the age, kept across the origin's restart); the size
/// bound does not (above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_durable_consumer_holds_back_the_age_bound_across_the_origins_restart() {
    let dir = data_dir();
    let age = std::time::Duration::from_secs(1);
    let origin = |name: &'static str, url: &str| {
        fast(name, url)
            .data_dir(dir.path().join(name))
            .fsync(chorus::Fsync::OsBuffered)
            .retention(u64::MAX, age)
    };
    let a_url = unique_url("inproc", "ra");
    let a = origin("a", &a_url).start().await.unwrap();
    let c = fast("c", &unique_url("inproc", "rc"))
        .data_dir(dir.path().join("c"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    // A consumer that stops after the first ten until it is let go on.
    let seen: Seen = Default::default();
    let go = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (log, gate) = (seen.clone(), go.clone());
    let opts = chorus::HandlerOptions::new().durable("audit");
    let _h = c
        .subscribe_with_options("t", opts, move |d: chorus::Delivery<u32>| {
            let (log, gate) = (log.clone(), gate.clone());
            async move {
                if d.value > 10 {
                    gate.acquire().await.unwrap().forget();
                    gate.add_permits(1);
                }
                log.lock().push((d.value, d.redelivered()));
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .unwrap();
    wait_mesh(&[&a, &c]).await;
    for i in 1..=10u32 {
        a.publish("t", &i).await.unwrap();
    }
    wait_for("the first ten", || seen.lock().len() == 10).await;
    wait_for("a to know the durable consumer", || {
        a.stats().durable_readers == 1
    })
    .await;
    // Two segments it does not get to (the first closed: only a whole
    // segment other than the newest is trimmed), and a restart of the origin.
    // A segment rolls over at the first append after it holds
    // SEGMENT_EVENTS, so the second wave starts once the first is in.
    let first_wave = chorus::store::log::SEGMENT_EVENTS as u32 + 100;
    let total = first_wave + 4_000;
    let publish_all = |p: Peer| async move {
        let wave = p.stats().log_events + u64::from(first_wave - 10);
        for i in 11..=first_wave {
            p.publish("t", &i).await.unwrap();
        }
        wait_for("the first wave in the log", || p.stats().log_events >= wave).await;
        for i in first_wave + 1..=total {
            p.publish("t", &i).await.unwrap();
        }
        p
    };
    let a = publish_all(a).await;
    a.shutdown().await; // its log has all of it (shutdown drains the writer)
    let a = origin("a", &a_url)
        .seed(c.local_url())
        .start()
        .await
        .unwrap();
    // A control origin with no durable consumer, written after a: once its
    // log is trimmed by age, a's would have been too.
    let b = publish_all(
        origin("b", &unique_url("inproc", "rb"))
            .start()
            .await
            .unwrap(),
    )
    .await;
    wait_for("the control log to be trimmed by age", || {
        b.stats().log_events < u64::from(total - 10)
    })
    .await;
    b.shutdown().await;
    wait_for("a's upkeep", || a.stats().durable_readers == 1).await;
    assert_eq!(a.stats().log_events, u64::from(total), "{:?}", a.stats());
    assert!(a.stats().log_segments >= 2, "{:?}", a.stats());

    // Let go on, it gets all of it.
    go.add_permits(1);
    wait_for("everything", || {
        seen.lock().last().is_some_and(|(v, _)| *v == total)
    })
    .await;
    assert_eq!(values(&seen), (1..=total).collect::<Vec<_>>());
    assert_eq!((c.stats().lost, a.stats().trimmed_unprocessed), (0, 0));
    // Once it has processed them, the age bound applies.
    wait_for("a's log to be trimmed by age", || {
        a.stats().log_events < u64::from(total)
    })
    .await;
    // Not heard of for longer than the age, it is forgotten.
    c.shutdown().await;
    wait_for("a to forget the stopped consumer", || {
        a.stats().durable_readers == 0
    })
    .await;
    a.shutdown().await;
}

/// A replay can only be asked for with the bus key: a NAK that says
/// `resume_from` without the tag gets no answer and is counted; with the
/// tag, it is answered from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_without_the_bus_key_is_refused() {
    use chorus::repair::{Nak, Repair};
    use nng::options::Options;
    const KEY: &[u8] = b"a bus key of more than sixteen bytes";
    let dir = data_dir();
    let a = fast("a", "tcp://127.0.0.1:0")
        .data_dir(dir.path().join("a"))
        .bus_key(KEY)
        .start()
        .await
        .unwrap();
    for i in 1..=10u32 {
        a.publish("t", &i).await.unwrap();
    }
    a.flush(DEADLINE).await.unwrap();
    let req = nng::Socket::new(nng::Protocol::Req0).unwrap();
    req.set_opt::<nng::options::RecvTimeout>(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    req.dial(&a.info().endpoints.repair).unwrap();
    let nak = Nak {
        origin: a.id(),
        incarnation: a.info().stream_epoch(),
        ranges: vec![(1, 10)],
        member: PeerId(999),
        resume_from: 1,
    }
    .encode();
    let ask = |bytes: &[u8]| -> Option<Vec<u8>> {
        req.send(nng::Message::from(bytes)).unwrap();
        req.recv().ok().map(|m| m.as_slice().to_vec())
    };
    tokio::task::block_in_place(|| {
        assert!(
            ask(&nak).is_none(),
            "an unauthenticated replay got an answer"
        );
        let answer = ask(&chorus::auth::seal_frame(KEY, &nak)).expect("an answer");
        let frame = chorus::auth::open_frame(KEY, &answer).expect("a sealed answer");
        let r = Repair::decode(frame, 1 << 20).unwrap();
        assert_eq!(
            r.frames.len(),
            10,
            "the keyed replay is answered from the log"
        );
    });
    assert!(a.stats().auth_failed >= 1);
    req.close();
    a.shutdown().await;
}

/// Six durable consumers replay a 20,000-event log at once while live
/// events flow: every consumer gets everything in order, the live
/// subscriber every live event, and the origin reads each event from its
/// log about once per consumer (bounded work per request, no amplification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_storm_is_served_without_amplification_and_live_traffic_flows() {
    const LOGGED: u32 = 20_000;
    const LIVE: u32 = 200;
    const CONSUMERS: usize = 6;
    let dir = data_dir();
    let a = fast("a", &unique_url("inproc", "sa"))
        .data_dir(dir.path().join("a"))
        .fsync(chorus::Fsync::OsBuffered)
        .start()
        .await
        .unwrap();
    for i in 1..=LOGGED {
        a.publish("t", &i).await.unwrap();
    }
    a.flush(DEADLINE).await.unwrap();
    let live = fast("live", &unique_url("inproc", "sl"))
        .seed(a.local_url())
        .start()
        .await
        .unwrap();
    let mut live_sub = live.subscribe::<u32>("t").unwrap();
    let mut consumers = Vec::new();
    for n in 0..CONSUMERS {
        let c = fast(&format!("c{n}"), &unique_url("inproc", "sc"))
            .data_dir(dir.path().join(format!("c{n}")))
            .seed(a.local_url())
            .start()
            .await
            .unwrap();
        let (h, seen) = durable_handler(&c, "storm", chorus::StartAt::Beginning).unwrap();
        consumers.push((c, h, seen));
    }
    a.wait_for_members(1 + CONSUMERS as u64, DEADLINE)
        .await
        .unwrap();
    for i in LOGGED + 1..=LOGGED + LIVE {
        a.publish("t", &i).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for i in LOGGED + 1..=LOGGED + LIVE {
        assert_eq!(next("a live event", &mut live_sub).await.value, i);
    }
    let total = (LOGGED + LIVE) as usize;
    for (c, _, seen) in &consumers {
        wait_for("a consumer's replay", || seen.lock().len() >= total).await;
        assert_eq!(values(seen), (1..=LOGGED + LIVE).collect::<Vec<_>>());
        assert_eq!(c.stats().lost, 0);
    }
    let s = a.stats();
    let per_consumer = u64::from(LOGGED + LIVE);
    // Each event sent about once per consumer: a NAK asked again because
    // its answer was late (a loaded machine) may fetch a window twice.
    let asked_again: u64 = consumers
        .iter()
        .map(|(c, _, _)| c.stats().naks_unanswered)
        .sum();
    assert!(
        s.retransmits <= CONSUMERS as u64 * per_consumer * 3 / 2,
        "{} retransmits for {CONSUMERS} replays of {per_consumer} ({asked_again} NAKs unanswered in time)",
        s.retransmits
    );
    println!(
        "replay storm: {CONSUMERS} × {per_consumer} events, {} retransmits ({} read from the log), {} NAKs",
        s.retransmits, s.log_reads, s.naks_received
    );
    for (c, h, _) in consumers {
        c.shutdown().await;
        h.finished().await;
    }
    live.shutdown().await;
    a.shutdown().await;
}
