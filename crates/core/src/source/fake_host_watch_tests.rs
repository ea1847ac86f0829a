//! The etcd watch (push mode) against the fake host: etcd's answers are
//! written by the test as the protobuf messages etcd sends.

use prost::Message;

use super::*;
use crate::source::etcd_proto::*;
use crate::source::fetcher::{WatchState, RETRY_BASE_MS, SILENCE_MS, WATCH_LEASE_MS};
use crate::source::settings::Mode;

fn watch_config() -> SourceConfig {
    SourceConfig {
        mode: Mode::Push,
        interval_ms: 5_000,
        max_backoff_ms: 60_000,
        ..etcd_config()
    }
}

fn kv(mod_revision: i64, value: &str) -> KeyValue {
    KeyValue {
        key: b"/gl/rules".to_vec(),
        mod_revision,
        value: value.as_bytes().to_vec(),
    }
}

fn range_answer(revision: i64, value: Option<(i64, &str)>) -> Vec<u8> {
    RangeResponse {
        header: Some(ResponseHeader { revision }),
        kvs: value.map(|(at, text)| kv(at, text)).into_iter().collect(),
        count: i64::from(value.is_some()),
    }
    .encode_to_vec()
}

fn created(watch_id: i64) -> Vec<u8> {
    WatchResponse {
        header: Some(ResponseHeader { revision: 1 }),
        watch_id,
        created: true,
        ..Default::default()
    }
    .encode_to_vec()
}

fn put_event(watch_id: i64, revision: i64, value: &str) -> Vec<u8> {
    WatchResponse {
        header: Some(ResponseHeader { revision }),
        watch_id,
        events: vec![Event {
            kind: 0,
            kv: Some(kv(revision, value)),
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

fn progress_answer(revision: i64) -> Vec<u8> {
    WatchResponse {
        header: Some(ResponseHeader { revision }),
        watch_id: -1,
        ..Default::default()
    }
    .encode_to_vec()
}

fn canceled(watch_id: i64, compact_revision: i64, reason: &str) -> Vec<u8> {
    WatchResponse {
        header: Some(ResponseHeader { revision: 30 }),
        watch_id,
        canceled: true,
        compact_revision,
        cancel_reason: reason.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

impl World {
    fn reads(&self) -> Vec<(u32, GrpcTarget, Vec<u8>)> {
        self.grpc.borrow().calls.clone()
    }
    fn last_read(&self) -> u32 {
        self.grpc.borrow().calls.last().expect("a read").0
    }
    fn streams(&self) -> Vec<u32> {
        self.grpc
            .borrow()
            .streams
            .iter()
            .map(|(token, _)| *token)
            .collect()
    }
    fn last_stream(&self) -> u32 {
        *self.streams().last().expect("a stream")
    }
    /// The requests sent on `stream`, decoded.
    fn sent_on(&self, stream: u32) -> Vec<WatchRequestUnion> {
        self.grpc
            .borrow()
            .sent
            .iter()
            .filter(|(token, _)| *token == stream)
            .filter_map(|(_, bytes)| WatchRequest::decode(bytes.as_slice()).ok()?.request)
            .collect()
    }
    fn canceled(&self) -> Vec<u32> {
        self.grpc.borrow().canceled.clone()
    }
}

/// The watch's create request on `stream`: (key, start revision).
fn create_on(world: &World, stream: u32) -> (Vec<u8>, i64) {
    match world.sent_on(stream).first() {
        Some(WatchRequestUnion::Create(create)) => (create.key.clone(), create.start_revision),
        other => panic!("no create request first on {stream}: {other:?}"),
    }
}

/// A fresh watcher that read revision 7 (the document at 5) and watches
/// from 8, with etcd's `created` (watch id 0) answered.
fn watching(world: &World, seed: u64) -> (Fetcher, u32) {
    world.now.set(1_000_000);
    let mut worker = Fetcher::new(watch_config(), base(), seed);
    assert!(worker.on_tick(&mut world.host()).is_none());
    let read = world.last_read();
    let installed = worker
        .on_grpc_message(
            &mut world.host(),
            read,
            &range_answer(7, Some((5, &doc(30)))),
        )
        .expect("the read installs");
    assert_eq!((installed.generation, installed.version), (1, 5));
    let stream = world.last_stream();
    assert!(worker
        .on_grpc_message(&mut world.host(), stream, &created(0))
        .is_none());
    (worker, stream)
}

#[test]
fn reads_once_then_watches_and_installs_each_put() {
    let world = World::default();
    let (mut worker, stream) = watching(&world, 1);
    let reads = world.reads();
    assert_eq!(reads.len(), 1);
    let (_, target, message) = &reads[0];
    assert_eq!(
        (target.service, target.method),
        ("etcdserverpb.KV", "Range")
    );
    assert_eq!(
        target.upstream,
        grpc_service("etcd", "etcd"),
        "the cluster, as an encoded GrpcService"
    );
    assert_eq!(
        target.metadata,
        vec![("authorization".to_string(), "Bearer t".to_string())]
    );
    assert_eq!(
        RangeRequest::decode(message.as_slice()).unwrap().key,
        b"/gl/rules"
    );
    let streams = world.grpc.borrow().streams.clone();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        (streams[0].1.service, streams[0].1.method),
        ("etcdserverpb.Watch", "Watch")
    );
    assert_eq!(create_on(&world, stream), (b"/gl/rules".to_vec(), 8));

    world.advance(10);
    let installed = worker
        .on_grpc_message(&mut world.host(), stream, &put_event(0, 9, &doc(50)))
        .expect("a put installs");
    assert_eq!((installed.generation, installed.version), (2, 9));
    assert_eq!(canary_weight(&installed), 5000);
    assert_eq!(world.gauges.borrow()["graylane_source_version"], 9);
    // Stored for the other workers, which adopt it on their next sync.
    let mut other = Fetcher::new(watch_config(), base(), 2);
    let adopted = other.sync(&mut world.host()).expect("adopted");
    assert_eq!((adopted.generation, adopted.version), (2, 9));
    // An event replayed (or older than the rules in force) is not installed again.
    assert!(worker
        .on_grpc_message(&mut world.host(), stream, &put_event(0, 9, &doc(50)))
        .is_none());
    assert_eq!(world.counter("graylane_source_updates_total"), 2);
    assert_eq!(world.counter("graylane_source_fetches_total"), 1);
    assert_eq!(world.counter("graylane_source_watches_total"), 1);
    assert!(world.warnings().is_empty(), "{:?}", world.warnings());
}

#[test]
fn at_idle_a_progress_request_now_and_then_and_no_reads() {
    let world = World::default();
    let (mut worker, stream) = watching(&world, 1);
    // A quiet minute, ticking every second; etcd answers each progress
    // request at once.
    for _ in 0..60 {
        world.advance(1_000);
        assert!(worker.on_tick(&mut world.host()).is_none());
        let progress = world
            .sent_on(stream)
            .iter()
            .filter(|request| matches!(request, WatchRequestUnion::Progress(_)))
            .count();
        if progress > 0
            && worker
                .watch_state()
                .is_some_and(|state| matches!(state, WatchState::Watching { probed: true, .. }))
        {
            worker.on_grpc_message(&mut world.host(), stream, &progress_answer(7));
        }
    }
    let progress = world
        .sent_on(stream)
        .iter()
        .filter(|request| matches!(request, WatchRequestUnion::Progress(_)))
        .count();
    assert!(
        (20..=60).contains(&progress),
        "{progress} progress requests"
    );
    assert_eq!(world.reads().len(), 1, "no read after the first");
    assert_eq!(world.streams(), vec![stream], "the one stream stays");
    assert!(world.canceled().is_empty());
    assert!(world.warnings().is_empty());
}

#[test]
fn a_hung_etcd_is_noticed_by_its_silence_and_the_watch_restarts() {
    let world = World::default();
    let (mut worker, stream) = watching(&world, 1);
    let started = world.now.get();
    // etcd answers nothing, not even progress requests.
    while world.canceled().is_empty() {
        world.advance(100);
        worker.on_tick(&mut world.host());
        assert!(world.now.get() - started < 10_000, "never noticed");
    }
    let noticed = world.now.get() - started;
    assert!(
        (SILENCE_MS..SILENCE_MS + 1_100).contains(&noticed),
        "{noticed}"
    );
    assert_eq!(world.canceled(), vec![stream]);
    assert!(matches!(
        worker.watch_state(),
        Some(WatchState::Backoff { failures: 1, .. })
    ));
    let warnings = world.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("nothing from etcd on the watch"),
        "{warnings:?}"
    );
    // The retry reads first, then watches from the read's revision + 1.
    while world.reads().len() == 1 {
        world.advance(50);
        worker.on_tick(&mut world.host());
    }
    assert!(world.now.get() - started - noticed <= RETRY_BASE_MS * 2);
    let read = world.last_read();
    // Unchanged: nothing installed, and the source is healthy again.
    assert!(worker
        .on_grpc_message(
            &mut world.host(),
            read,
            &range_answer(12, Some((5, &doc(30))))
        )
        .is_none());
    assert_eq!(create_on(&world, world.last_stream()).1, 13);
    assert_eq!(world.warnings().len(), 1);
    assert!(world
        .logs
        .borrow()
        .iter()
        .any(|(_, line)| line.contains("answering again")));
}

#[test]
fn a_broken_stream_backs_off_logs_each_change_once_and_recovers() {
    let world = World::default();
    let (mut worker, stream) = watching(&world, 1);
    // etcd killed: the stream closes with 13; while it is down, every read
    // closes with 14.
    worker.on_grpc_close(&mut world.host(), stream, 13);
    assert!(
        world.canceled().is_empty(),
        "a closed stream is not canceled"
    );
    let mut pauses = Vec::new();
    let mut failed_at = world.now.get();
    for _ in 0..8 {
        let reads = world.reads().len();
        while world.reads().len() == reads {
            world.advance(10);
            worker.on_tick(&mut world.host());
        }
        pauses.push(world.now.get() - failed_at);
        worker.on_grpc_close(&mut world.host(), world.last_read(), 14);
        failed_at = world.now.get();
    }
    // 250 ms doubling, ±10%, up to the 5 s interval.
    assert!((220..=290).contains(&pauses[0]), "{pauses:?}");
    assert!((440..=560).contains(&pauses[1]), "{pauses:?}");
    assert!(
        pauses.windows(2).all(|pair| pair[1] + 60 >= pair[0]),
        "{pauses:?}"
    );
    assert!(pauses.iter().all(|pause| *pause <= 5_010), "{pauses:?}");
    assert!(*pauses.last().unwrap() >= 4_400, "{pauses:?}");
    assert_eq!(worker.generation(), 1, "the rules in force stay");
    let warnings = world.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("the etcd watch stream ended with gRPC status 13"));
    assert!(warnings[1].contains("the etcd read ended with gRPC status 14"));
    assert_eq!(world.counter("graylane_source_failures_total"), 9);

    // etcd back with a new document.
    let reads = world.reads().len();
    while world.reads().len() == reads {
        world.advance(10);
        worker.on_tick(&mut world.host());
    }
    let installed = worker
        .on_grpc_message(
            &mut world.host(),
            world.last_read(),
            &range_answer(40, Some((40, &doc(70)))),
        )
        .expect("the new document");
    assert_eq!(installed.version, 40);
    let stream = world.last_stream();
    assert_eq!(create_on(&world, stream).1, 41);
    worker.on_grpc_message(&mut world.host(), stream, &created(0));
    assert!(matches!(
        worker.watch_state(),
        Some(WatchState::Watching { .. })
    ));
    assert_eq!(world.warnings().len(), 2);
    // The next failure backs off from the start again.
    worker.on_grpc_close(&mut world.host(), stream, 13);
    assert!(matches!(
        worker.watch_state(),
        Some(WatchState::Backoff { failures: 1, .. })
    ));
}

#[test]
fn garbage_from_etcd_fails_safely() {
    let world = World::default();
    let (mut worker, stream) = watching(&world, 1);
    assert!(worker
        .on_grpc_message(&mut world.host(), stream, b"\xff\xff\xff garbage")
        .is_none());
    assert_eq!(world.canceled(), vec![stream]);
    assert!(world.warnings()[0].contains("not a WatchResponse"));
    while world.reads().len() == 1 {
        world.advance(10);
        worker.on_tick(&mut world.host());
    }
    // A read answered with garbage, or without a revision.
    for answer in [
        b"\x0a\xff".to_vec(),
        RangeResponse::default().encode_to_vec(),
    ] {
        let read = world.last_read();
        assert!(worker
            .on_grpc_message(&mut world.host(), read, &answer)
            .is_none());
        assert!(matches!(
            worker.watch_state(),
            Some(WatchState::Backoff { .. })
        ));
        let reads = world.reads().len();
        while world.reads().len() == reads {
            world.advance(10);
            worker.on_tick(&mut world.host());
        }
    }
    assert_eq!(worker.generation(), 1);
    assert_eq!(world.warnings().len(), 2, "{:?}", world.warnings());
}

#[test]
fn arbitrary_watch_messages_never_panic() {
    let world = World::default();
    let (mut worker, _) = watching(&world, 1);
    let mut seed = 0x0123_4567_89ab_cdefu64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = [
        created(0),
        put_event(0, 50, &doc(10)),
        put_event(0, 51, "{not json"),
        canceled(0, 3, ""),
        progress_answer(9),
    ];
    for _ in 0..3_000 {
        world.advance(next() % 700);
        worker.on_tick(&mut world.host());
        let token = match worker.watch_state() {
            Some(WatchState::Reading { call, .. }) => *call,
            Some(WatchState::Watching { stream, .. }) => *stream,
            _ => continue,
        };
        let mut message = valid[(next() % 5) as usize].clone();
        match next() % 4 {
            0 => {
                let at = (next() as usize) % message.len().max(1);
                message.truncate(at);
            }
            1 => {
                if let Some(byte) = message.get_mut((next() as usize) % 8) {
                    *byte ^= next() as u8;
                }
            }
            2 => message = (0..next() % 40).map(|_| next() as u8).collect(),
            _ => {}
        }
        if next() % 10 == 0 {
            worker.on_grpc_close(&mut world.host(), token, (next() % 17) as u32);
        } else if let Some(installed) = worker.on_grpc_message(&mut world.host(), token, &message) {
            assert_eq!(installed.rules.services.len(), 1);
        }
    }
}

#[test]
fn a_document_that_does_not_compile_keeps_the_rules_and_the_watch() {
    let world = World::default();
    let (mut worker, stream) = watching(&world, 1);
    for revision in [9, 10] {
        assert!(worker
            .on_grpc_message(
                &mut world.host(),
                stream,
                &put_event(0, revision, &doc(250))
            )
            .is_none());
    }
    assert_eq!(worker.generation(), 1);
    assert_eq!(world.counter("graylane_source_rejected_total"), 2);
    // Said once, and the stream is fine: nothing canceled or reopened.
    let warnings = world.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("document refused"), "{warnings:?}");
    assert!(world.canceled().is_empty());
    assert_eq!(world.streams(), vec![stream]);
    let installed = worker
        .on_grpc_message(&mut world.host(), stream, &put_event(0, 11, &doc(40)))
        .expect("the fixed document");
    assert_eq!(installed.version, 11);
    assert!(world
        .logs
        .borrow()
        .iter()
        .any(|(_, line)| line.contains("answering again")));
    // A delete keeps the rules too.
    let delete = WatchResponse {
        watch_id: 0,
        events: vec![Event {
            kind: EVENT_DELETE,
            kv: Some(kv(12, "")),
        }],
        ..Default::default()
    };
    assert!(worker
        .on_grpc_message(&mut world.host(), stream, &delete.encode_to_vec())
        .is_none());
    assert_eq!(worker.generation(), 2);
    assert!(world.warnings()[1].contains("the etcd key does not exist"));
}

#[test]
fn a_compacted_revision_is_read_again_and_no_value_is_lost() {
    let world = World::default();
    let (mut first, _) = watching(&world, 1);
    assert!(first
        .on_grpc_message(
            &mut world.host(),
            world.last_stream(),
            &put_event(0, 9, &doc(50))
        )
        .is_some());
    // That worker's VM goes away; another takes the watch over from the
    // revision it adopted (9), without a read.
    drop(first);
    let mut second = Fetcher::new(watch_config(), base(), 2);
    assert!(second.sync(&mut world.host()).is_some());
    let streams = world.streams().len();
    while world.streams().len() == streams {
        world.advance(100);
        second.on_tick(&mut world.host());
    }
    assert_eq!(world.reads().len(), 1, "a takeover needs no read");
    let stream = world.last_stream();
    assert_eq!(create_on(&world, stream).1, 10);
    // etcd compacted up to 20 meanwhile, and the key changed at 15: the
    // watch is created, then canceled with compact_revision.
    assert!(second
        .on_grpc_message(&mut world.host(), stream, &created(4))
        .is_none());
    assert!(second
        .on_grpc_message(&mut world.host(), stream, &canceled(4, 20, ""))
        .is_none());
    // The stream is given up at once and the key read at once: no backoff.
    assert_eq!(world.canceled(), vec![stream]);
    assert_eq!(world.reads().len(), 2);
    let installed = second
        .on_grpc_message(
            &mut world.host(),
            world.last_read(),
            &range_answer(30, Some((15, &doc(90)))),
        )
        .expect("the latest value");
    assert_eq!(installed.version, 15);
    // A new stream, from after the read.
    let again = world.last_stream();
    assert_ne!(again, stream);
    assert_eq!(create_on(&world, again).1, 31);
    assert!(world.warnings().is_empty(), "compaction is no failure");
}

#[test]
fn a_refused_or_duplicate_watch_restarts_on_a_new_stream() {
    let world = World::default();
    let (mut worker, stream) = watching(&world, 1);
    // A second `created` for another watch id, and events of that watch,
    // are not this watch's: ignored.
    assert!(worker
        .on_grpc_message(&mut world.host(), stream, &created(7))
        .is_none());
    assert!(worker
        .on_grpc_message(&mut world.host(), stream, &put_event(7, 9, &doc(50)))
        .is_none());
    assert_eq!(worker.generation(), 1);
    // The watch refused (etcd: created and canceled at once).
    assert!(worker
        .on_grpc_message(
            &mut world.host(),
            stream,
            &canceled(0, 0, "duplicate watch ID")
        )
        .is_none());
    assert_eq!(world.canceled(), vec![stream]);
    assert!(world.warnings()[0].contains("etcd canceled the watch: duplicate watch ID"));
    while world.streams().len() == 1 {
        world.advance(20);
        worker.on_tick(&mut world.host());
        if let Some(WatchState::Reading { call, .. }) = worker.watch_state().cloned() {
            worker.on_grpc_message(
                &mut world.host(),
                call,
                &range_answer(9, Some((5, &doc(30)))),
            );
        }
    }
    let again = world.last_stream();
    assert_ne!(again, stream);
    assert_eq!(create_on(&world, again).1, 10);
    // Late answers on the old stream are stale: ignored.
    assert!(worker
        .on_grpc_message(&mut world.host(), stream, &put_event(0, 20, &doc(1)))
        .is_none());
    worker.on_grpc_close(&mut world.host(), stream, 13);
    assert!(
        matches!(worker.watch_state(), Some(WatchState::Watching { stream: s, .. }) if *s == again)
    );
}

#[test]
fn one_watch_per_gateway_and_a_takeover_when_the_holder_stops() {
    let world = World::default();
    world.now.set(2_000_000);
    let mut workers: Vec<Fetcher> = (10..14)
        .map(|seed| Fetcher::new(watch_config(), base(), seed))
        .collect();
    for _ in 0..30 {
        world.advance(1_000);
        for worker in &mut workers {
            worker.on_tick(&mut world.host());
            if let Some(WatchState::Reading { call, .. }) = worker.watch_state().cloned() {
                worker.on_grpc_message(
                    &mut world.host(),
                    call,
                    &range_answer(3, Some((2, &doc(5)))),
                );
            }
            if let Some(WatchState::Watching {
                stream,
                probed: true,
                ..
            }) = worker.watch_state().cloned()
            {
                worker.on_grpc_message(&mut world.host(), stream, &progress_answer(3));
            }
        }
    }
    let watching: Vec<usize> = (0..workers.len())
        .filter(|at| {
            matches!(
                workers[*at].watch_state(),
                Some(WatchState::Watching { .. })
            )
        })
        .collect();
    assert_eq!(watching.len(), 1, "one watch for the gateway");
    assert_eq!((world.reads().len(), world.streams().len()), (1, 1));
    for worker in &mut workers {
        worker.on_tick(&mut world.host());
        assert_eq!(worker.generation(), 1, "every worker adopted the document");
    }
    // The watching VM stops ticking (it is gone): within the lease another
    // worker watches, from the revision it has.
    let gone = watching[0];
    let stopped = world.now.get();
    while world.streams().len() == 1 {
        world.advance(250);
        for (at, worker) in workers.iter_mut().enumerate() {
            if at != gone {
                worker.on_tick(&mut world.host());
            }
        }
        assert!(world.now.get() - stopped < 10_000);
    }
    assert!(world.now.get() - stopped <= WATCH_LEASE_MS + 1_000);
    assert_eq!(create_on(&world, world.last_stream()).1, 3);
    assert_eq!(world.reads().len(), 1);
}

#[test]
fn a_host_without_grpc_keeps_the_inline_rules_and_says_so_once() {
    let world = World::default();
    world.now.set(1_000);
    world.grpc.borrow_mut().refuse = true;
    let mut worker = Fetcher::new(watch_config(), base(), 1);
    for _ in 0..100 {
        world.advance(500);
        assert!(worker.on_tick(&mut world.host()).is_none());
    }
    let warnings = world.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("cannot send the request: no such cluster"));
    // Retried at most every interval (5 s) once backed off.
    assert!(world.counter("graylane_source_failures_total") <= 20);
}
