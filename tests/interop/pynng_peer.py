#!/usr/bin/env python3
"""A chorus peer written from docs/WIRE.md alone, with pynng and msgpack.

publish URL N   listen on URL (pub0; tcp port 0 allowed), print "listening URL"; once a subscriber is connected send
                N valid envelopes (payload {"n": i, "text": ...}) interleaved
                with garbage, wrong-version, invalid-topic and undecodable
                frames; then wait for a line on stdin before closing.
subscribe URL N dial URL (a chorus publisher, sub0), print "ready", receive N envelopes, check
                each against WIRE.md and print it as one JSON line.
"""
import json
import sys
import threading
import time

import msgpack
import pynng

ORIGIN = 0x5EED_0000_0000_0001
INCARNATION = int(time.time() * 1_000_000)


def envelope(seq, topic, payload, msg_id=None, correlation=None, headers=None):
    body = [ORIGIN, INCARNATION, seq, msg_id, topic, int(time.time() * 1_000_000),
            correlation, headers or {}, payload]
    return msgpack.packb([1, 0, body], use_bin_type=True)


def listen(sock, url):
    """Listens on url and returns the URL with the real port."""
    listener = sock.listen(url)
    # str() of the address is right; its .port is byte-swapped (NNG-NOTES.md).
    port = str(listener.local_address).rsplit(":", 1)[1]
    return f"{url.rsplit(':', 1)[0]}:{port}"


def answer_surveys(seed, info, stop):
    """Be a member: answer every survey from the seed with our PeerInfo."""
    with pynng.Respondent0(dial=seed, recv_timeout=100) as resp:
        heartbeat = 0
        while not stop.is_set():
            try:
                frame = msgpack.unpackb(resp.recv(), raw=False)
            except pynng.Timeout:
                continue
            version, kind, body = frame
            if version != 1 or kind != 1:
                continue
            heartbeat += 1
            # Response: [from PeerInfo, heartbeat, last_seq, gossip, acks]
            resp.send(msgpack.packb([1, 2, [info, heartbeat, 0, [], []]], use_bin_type=True))


def publish(url, seed, n):
    with pynng.Pub0() as pub, pynng.Surveyor0() as surveyor:
        pub_url = listen(pub, url)
        survey_url = listen(surveyor, url)  # never surveys; chorus may dial it
        print(f"listening {pub_url}", flush=True)
        # PeerInfo: [id, incarnation, name, [survey URL, publish URL, repair URL]]
        # This peer keeps no retransmit buffer: its repair URL answers nothing.
        info = [ORIGIN, INCARNATION, "pynng-publisher", [survey_url, pub_url, "tcp://127.0.0.1:1"]]
        stop = threading.Event()
        member = threading.Thread(target=answer_surveys, args=(seed, info, stop))
        member.start()
        deadline = time.time() + 20
        while not pub.pipes:
            if time.time() > deadline:
                sys.exit("no subscriber connected")
            time.sleep(0.01)
        seq = 1
        for i in range(n):
            payload = msgpack.packb({"n": i, "text": f"hello {i}"}, use_bin_type=True)
            pub.send(envelope(seq, "interop.py", payload, msg_id=f"py-{i}",
                              correlation="py-flow", headers={"lang": "python"}))
            seq += 1
            # One of each kind of bad input after every valid message.
            pub.send(b"\xc1 not msgpack at all")
            pub.send(msgpack.packb([2, 0, []]))                      # wrong version
            pub.send(envelope(999_999, "interop..bad", b"\x00"))     # invalid topic
            # A valid envelope (the next seq: no gap) whose payload is not a Hello.
            pub.send(envelope(seq, "interop.py", msgpack.packb("not a struct")))
            seq += 1
            time.sleep(0.002)
        print("sent", flush=True)
        sys.stdin.readline()
        stop.set()
        member.join()


def subscribe(url, n):
    with pynng.Sub0(dial=url, recv_timeout=20_000) as sub:
        sub.subscribe(b"")
        deadline = time.time() + 20
        while not sub.pipes:
            if time.time() > deadline:
                sys.exit("could not connect")
            time.sleep(0.01)
        print("ready", flush=True)
        received = 0
        while received < n:
            frame = msgpack.unpackb(sub.recv(), raw=False)
            assert isinstance(frame, list) and len(frame) == 3, frame
            version, kind, body = frame
            assert version == 1 and kind in (0, 5), (version, kind)
            # Kind 0 carries one envelope, kind 5 (a batch) several.
            for env in [body] if kind == 0 else body:
                assert len(env) == 9, env
                origin, inc, seq, msg_id, topic, ts, corr, headers, payload = env
                assert isinstance(payload, bytes), type(payload)
                value = msgpack.unpackb(payload, raw=False)
                print(json.dumps({"origin": origin, "incarnation": inc, "seq": seq, "id": msg_id,
                                  "topic": topic, "timestamp": ts, "correlation_id": corr,
                                  "headers": headers, "value": value}), flush=True)
                received += 1

if __name__ == "__main__":
    if sys.argv[1] == "publish":
        publish(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        subscribe(sys.argv[2], int(sys.argv[3]))
