//! Request/reply over real sockets: the happy path (with the request's
//! flow at the responder), a timeout, no responder, a responder's error, a
//! reply that does not decode, and a group of responders that loses the
//! one handling a request (another one answers).

mod common;

use std::sync::Arc;
use std::time::Duration;

use chorus::{Delivery, Error, Peer, PublishOptions};
use common::{fast, unique_url, wait_for, wait_mesh};

async fn bus(servers: usize) -> (Peer, Vec<Peer>) {
    let client = fast("client", &unique_url("tcp", "c"))
        .start()
        .await
        .unwrap();
    let mut peers = Vec::new();
    for i in 0..servers {
        peers.push(
            fast(&format!("server-{i}"), &unique_url("tcp", "s"))
                .seed(client.local_url())
                .start()
                .await
                .unwrap(),
        );
    }
    let all: Vec<&Peer> = std::iter::once(&client).chain(peers.iter()).collect();
    wait_mesh(&all).await;
    (client, peers)
}

async fn served(client: &Peer, members: u64) {
    wait_for("the client counts the servers", || {
        client.stats().group_members >= members
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_get_replies_errors_and_timeouts_apart() {
    let (client, servers) = bus(1).await;
    let s = &servers[0];
    s.serve("quotes.get", "quotes", |d: Delivery<String>| async move {
        match d.value.as_str() {
            "pears" => Err("out of stock".to_string()),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(0u64)
            }
            _ => Ok(d.value.len() as u64 * 100 + d.correlation_id().map_or(0, |c| c.len() as u64)),
        }
    })
    .unwrap();
    s.serve("names.get", "names", |_: Delivery<u64>| async move {
        Ok::<_, String>("not a number".to_string())
    })
    .unwrap();
    served(&client, 2).await;
    let t = Duration::from_secs(10);
    // Happy path; the responder sees the request's flow.
    let answer: u64 = client
        .request_with(
            "quotes.get",
            "apples",
            PublishOptions::new().correlation_id("flow-1"),
            t,
        )
        .await
        .unwrap();
    assert_eq!(answer, 600 + 6);
    // The responder's error.
    match client.request::<_, u64>("quotes.get", "pears", t).await {
        Err(Error::Remote { message, .. }) => assert_eq!(message, "out of stock"),
        other => panic!("{other:?}"),
    }
    // A timeout.
    match client
        .request::<_, u64>("quotes.get", "slow", Duration::from_millis(300))
        .await
    {
        Err(Error::Timeout(m)) => assert!(m.contains("quotes.get"), "{m}"),
        other => panic!("{other:?}"),
    }
    // No responder at all.
    match client.request::<_, u64>("weather.get", "x", t).await {
        Err(Error::NoResponder { topic }) => assert_eq!(topic, "weather.get"),
        other => panic!("{other:?}"),
    }
    // A reply that does not decode into the type asked for.
    match client.request::<_, u64>("names.get", &7u64, t).await {
        Err(Error::BadReply { .. }) => {}
        other => panic!("{other:?}"),
    }
    // Raw bytes both ways; the reserved prefix is refused.
    s.serve_bytes("echo", "echo", |d: Delivery<bytes::Bytes>| async move {
        Ok::<_, String>(d.value)
    })
    .unwrap();
    served(&client, 3).await;
    let echoed = client.request_bytes("echo", &b"hi"[..], t).await.unwrap();
    assert_eq!(&echoed[..], b"hi");
    assert!(matches!(
        client.request_bytes("$chorus.reply.x", &b"hi"[..], t).await,
        Err(Error::InvalidTopic { .. })
    ));
    for p in servers.iter().chain([&client]) {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_responders_answers_when_the_one_handling_a_request_is_gone() {
    let (client, servers) = bus(2).await;
    let (got, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    let got = Arc::new(got);
    // Server 0 takes requests and never answers.
    let stuck = servers[0]
        .serve("quotes.get", "quotes", move |d: Delivery<String>| {
            let got = got.clone();
            async move {
                let _ = got.send(d.value.clone());
                std::future::pending::<()>().await;
                Ok::<u64, String>(0)
            }
        })
        .unwrap();
    servers[1]
        .serve("quotes.get", "quotes", |d: Delivery<String>| async move {
            Ok::<u64, String>(if d.redelivered() { 2 } else { 1 })
        })
        .unwrap();
    served(&client, 2).await;
    // Keys spread requests: find one that server 0 takes.
    let mut taken = None;
    for k in 0..50 {
        let key = format!("k{k}");
        let c = client.clone();
        let k2 = key.clone();
        let mut asked = tokio::spawn(async move {
            c.request_with::<_, u64>(
                "quotes.get",
                &k2,
                PublishOptions::new().key(k2.clone()),
                Duration::from_secs(15),
            )
            .await
        });
        tokio::select! {
            answer = &mut asked => {
                assert_eq!(answer.unwrap().unwrap(), 1, "server 1 answers its own keys");
            }
            stuck_on = got_rx.recv() => {
                assert_eq!(stuck_on.unwrap(), key);
                taken = Some(asked);
                break;
            }
        }
    }
    let asked = taken.expect("server 0 took one of 50 keys");
    // Server 0's handler goes away with the request: server 1 answers it.
    stuck.stop();
    assert_eq!(
        asked.await.unwrap().unwrap(),
        2,
        "answered by server 1, flagged"
    );
    assert!(client.stats().group_failed_over >= 1);
    for p in servers.iter().chain([&client]) {
        p.shutdown().await;
    }
}
