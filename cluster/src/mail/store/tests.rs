use std::io::Write;
use std::sync::Arc;

use super::*;

fn open(dir: &Path) -> Store {
    Store::open(
        dir,
        1,
        DiskConfig::Real,
        Default::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

fn body(text: &str) -> Arc<[u8]> {
    Arc::from(text.as_bytes())
}

#[tokio::test]
async fn delivered_messages_survive_reopen_with_stable_uids() {
    let dir = tempfile::tempdir().unwrap();
    let uidvalidity;
    {
        let store = open(dir.path());
        uidvalidity = store.uid_validity();
        let uids = store
            .deliver(
                vec!["a".into(), "b".into()],
                body("one\r\n"),
                Flags::empty(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(uids, vec![uid_of(1, 1), uid_of(1, 1)]);
        let uids = store
            .deliver(vec!["a".into()], body("two\r\n"), Flags::empty(), None)
            .await
            .unwrap();
        assert_eq!(uids, vec![uid_of(2, 1)]);
        store
            .set_flags("a", vec![uid_of(1, 1)], FlagMode::Add, Flags::SEEN)
            .await
            .unwrap();
        assert_eq!(
            store.expunge("b", vec![uid_of(1, 1), 99]).await.unwrap(),
            vec![uid_of(1, 1)]
        );
    }
    let store = open(dir.path());
    assert_eq!(store.uid_validity(), uidvalidity);
    let a = store.snapshot("a");
    assert_eq!(
        a.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        vec![uid_of(1, 1), uid_of(2, 1)]
    );
    assert!(a.messages[0].flags.contains(&Flags::SEEN));
    assert_eq!(store.read(&a.messages[1]).await.unwrap(), b"two\r\n");
    assert!(store.snapshot("b").messages.is_empty());
    // UIDs are never reused, even after the newest message is expunged.
    store.expunge("a", vec![uid_of(2, 1)]).await.unwrap();
    let uids = store
        .deliver(vec!["a".into()], body("three\r\n"), Flags::empty(), None)
        .await
        .unwrap();
    assert_eq!(uids, vec![uid_of(3, 1)]);
}

#[tokio::test]
async fn torn_tail_is_discarded_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .deliver(vec!["a".into()], body("kept\r\n"), Flags::empty(), None)
            .await
            .unwrap();
    }
    // Simulate a crash in the middle of appending the next record.
    let seg = segment::segment_path(dir.path(), 1);
    let good_len = std::fs::metadata(&seg).unwrap().len();
    let mut torn = Vec::new();
    record::encode(
        &record::Record::Deliver {
            user: "a".into(),
            uid: uid_of(2, 1),
            internal_date: 0,
            flags: Flags::empty(),
            ts_ms: 0,
            targets: Vec::new(),
            replicas: Vec::new(),
            body: body("lost in the crash\r\n"),
        },
        &mut torn,
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&torn[..torn.len() - 3]).unwrap();
    drop(f);

    let store = open(dir.path());
    let a = store.snapshot("a");
    assert_eq!(a.messages.len(), 1);
    assert_eq!(store.read(&a.messages[0]).await.unwrap(), b"kept\r\n");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    // The log is appendable again after the cut.
    let uids = store
        .deliver(vec!["a".into()], body("after\r\n"), Flags::empty(), None)
        .await
        .unwrap();
    assert_eq!(uids, vec![uid_of(2, 1)]);
}

#[tokio::test]
async fn concurrent_deliveries_get_distinct_ascending_uids() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .deliver(
                    vec!["hot".into()],
                    body(&format!("m{i}\r\n")),
                    Flags::empty(),
                    None,
                )
                .await
                .unwrap()[0]
        }));
    }
    let mut uids = Vec::new();
    for t in tasks {
        uids.push(t.await.unwrap());
    }
    uids.sort_unstable();
    assert_eq!(uids, (1..=200).map(|s| uid_of(s, 1)).collect::<Vec<u32>>());
    assert_eq!(store.stats().messages, 200);
}

#[tokio::test]
async fn flag_modes_compose() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .deliver(vec!["a".into()], body("x\r\n"), Flags::DRAFT, None)
        .await
        .unwrap();
    let r = store
        .set_flags("a", vec![uid_of(1, 1)], FlagMode::Add, Flags::SEEN)
        .await
        .unwrap();
    assert_eq!(r, vec![(uid_of(1, 1), Flags::DRAFT.union(&Flags::SEEN))]);
    let r = store
        .set_flags("a", vec![uid_of(1, 1)], FlagMode::Remove, Flags::DRAFT)
        .await
        .unwrap();
    assert_eq!(r, vec![(uid_of(1, 1), Flags::SEEN)]);
    let r = store
        .set_flags(
            "a",
            vec![uid_of(1, 1), 5],
            FlagMode::Replace,
            Flags::FLAGGED,
        )
        .await
        .unwrap();
    assert_eq!(r, vec![(uid_of(1, 1), Flags::FLAGGED)]);
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match Store::open(
        dir.path(),
        1,
        DiskConfig::Real,
        Default::default(),
        Arc::new(Metrics::new()),
    ) {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("second store opened the same directory"),
    }
}

#[tokio::test]
async fn modelled_disk_charges_one_sync_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskConfig::Modelled {
        syncs_per_s: 100.0,
        latency_ms: 0.0,
        log: Default::default(),
    };
    let store = Store::open(
        dir.path(),
        1,
        disk,
        Default::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let start = std::time::Instant::now();
    // 20 records, one after another: at 100 syncs/s that is at least 200 ms of device time.
    for i in 0..20 {
        store
            .deliver(
                vec!["a".into()],
                body(&format!("m{i}\r\n")),
                Flags::empty(),
                None,
            )
            .await
            .unwrap();
    }
    assert!(start.elapsed() >= std::time::Duration::from_millis(200));
    // The data is really written: it survives a reopen.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.snapshot("a").messages.len(), 20);
}

#[tokio::test]
async fn a_modelled_log_on_the_disk_charges_bookkeeping_too() {
    for (log, expected) in [
        (crate::mail::config::LogDevice::Nvram, 4),
        (crate::mail::config::LogDevice::Disk, 8),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let disk = DiskConfig::Modelled {
            syncs_per_s: 10_000.0,
            latency_ms: 0.0,
            log,
        };
        let store = Store::open(dir.path(), 1, disk, Default::default(), metrics.clone()).unwrap();
        for i in 0..4 {
            // A first replica's copy that owes node 2 a push...
            let uid = store
                .store(NewMessage {
                    uid: None,
                    targets: vec![2],
                    ..replica("a", 0, &format!("m{i}\r\n"))
                })
                .await
                .unwrap();
            // ... and node 2's acknowledgement: bookkeeping.
            store.acked("a", uid, 2).await.unwrap();
        }
        assert_eq!(metrics.modelled_syncs_total.get(), expected, "{log:?}");
    }
}

fn replica(user: &str, uid: u32, text: &str) -> NewMessage {
    NewMessage {
        user: user.into(),
        body: body(text),
        flags: Flags::empty(),
        internal_date: None,
        uid: Some(uid),
        seq_hint: 0,
        ts_ms: 1,
        targets: Vec::new(),
        replicas: Vec::new(),
    }
}

#[tokio::test]
async fn replicas_are_stored_once_and_never_after_an_expunge() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let uid = uid_of(7, 2);
    assert_eq!(store.store(replica("a", uid, "r\r\n")).await.unwrap(), uid);
    assert_eq!(store.store(replica("a", uid, "r\r\n")).await.unwrap(), uid);
    assert_eq!(store.snapshot("a").messages.len(), 1);
    // This node's next own UID for the user is above the replica's.
    let own = store
        .deliver(vec!["a".into()], body("x\r\n"), Flags::empty(), None)
        .await
        .unwrap()[0];
    assert_eq!(own, uid_of(8, 1));
    store.expunge("a", vec![uid]).await.unwrap();
    store.store(replica("a", uid, "r\r\n")).await.unwrap();
    assert_eq!(
        store.snapshot("a").messages.len(),
        1,
        "an expunged replica came back"
    );
    drop(store);
    let store = open(dir.path());
    store.store(replica("a", uid, "r\r\n")).await.unwrap();
    assert_eq!(
        store.snapshot("a").messages.len(),
        1,
        "the tombstone did not survive a restart"
    );
}

#[tokio::test]
async fn pending_pushes_are_logged_and_retired_by_acks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let uid = store
        .store(NewMessage {
            targets: vec![2, 3],
            uid: None,
            ..replica("a", 0, "m\r\n")
        })
        .await
        .unwrap();
    assert_eq!(store.push_backlog(), 2);
    store.acked("a", uid, 2).await.unwrap();
    drop(store);
    // The remaining target survives a crash, and is retired by its ack.
    let store = open(dir.path());
    assert_eq!(
        store.pending_pushes(10),
        vec![PendingPush {
            user: "a".into(),
            uid,
            targets: vec![3]
        }]
    );
    store.acked("a", uid, 3).await.unwrap();
    assert_eq!(store.push_backlog(), 0);
}

#[tokio::test]
async fn older_flag_replacements_lose_to_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let uid = uid_of(1, 2);
    store.store(replica("a", uid, "m\r\n")).await.unwrap();
    store
        .set_flags_at("a", vec![uid], FlagMode::Replace, Flags::SEEN, 100, false)
        .await
        .unwrap();
    let r = store
        .set_flags_at("a", vec![uid], FlagMode::Replace, Flags::FLAGGED, 50, false)
        .await
        .unwrap();
    assert_eq!(r, vec![(uid, Flags::SEEN)]);
    assert_eq!(store.message("a", uid).unwrap().flags, Flags::SEEN);
}

#[tokio::test]
async fn owed_state_changes_are_logged_with_the_change_and_settled_by_acks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let uid = store
        .store(NewMessage {
            uid: None,
            replicas: vec![1, 2, 3],
            ..replica("a", 0, "m\r\n")
        })
        .await
        .unwrap();
    let other = store
        .store(NewMessage {
            uid: None,
            replicas: vec![1, 2],
            ..replica("a", 0, "n\r\n")
        })
        .await
        .unwrap();
    store
        .set_flags_at("a", vec![uid], FlagMode::Add, Flags::SEEN, 10, true)
        .await
        .unwrap();
    store.expunge_owing("a", vec![other], true).await.unwrap();
    // Expunging a UID this node never held still leaves a tombstone (nothing to owe).
    let never_held = uid_of(5, 2);
    assert!(store
        .expunge_owing("a", vec![never_held], true)
        .await
        .unwrap()
        .is_empty());
    assert!(store.is_expunged("a", never_held));
    assert_eq!(store.push_backlog(), 3);
    store
        .settled("a", uid, 2, SentState::Nothing)
        .await
        .unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.owed_changes(10),
        vec![
            PendingPush {
                user: "a".into(),
                uid,
                targets: vec![3]
            },
            PendingPush {
                user: "a".into(),
                uid: other,
                targets: vec![2]
            }
        ]
    );
    store
        .settled("a", uid, 3, SentState::Nothing)
        .await
        .unwrap();
    store
        .settled("a", other, 2, SentState::Nothing)
        .await
        .unwrap();
    assert_eq!(store.push_backlog(), 0);
}

#[tokio::test]
async fn profiles_keep_the_newest_password_and_their_pushes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .set_profile("alice", "new", 20, vec![2, 3])
        .await
        .unwrap();
    store
        .set_profile("alice", "old", 10, Vec::new())
        .await
        .unwrap();
    assert_eq!(store.profile("alice"), Some(("new".to_string(), 20)));
    store.acked("alice", PROFILE_UID, 2).await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.profile("alice"), Some(("new".to_string(), 20)));
    assert_eq!(
        store.pending_pushes(10),
        vec![PendingPush {
            user: "alice".into(),
            uid: PROFILE_UID,
            targets: vec![3]
        }]
    );
    assert!(
        store.users().is_empty(),
        "a profile is not a mailbox fragment"
    );
}

/// Found by the simulation: a profile push was on its way when the password changed again; its
/// answer retired the push of the new password, and that replica kept the old one for good.
#[tokio::test]
async fn a_profile_push_answered_after_the_profile_changed_is_pushed_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .set_profile("alice", "first", 10, vec![2])
        .await
        .unwrap();
    // "first" (stamped 10) is on its way to node 2 when "second" is set.
    store
        .set_profile("alice", "second", 20, vec![2])
        .await
        .unwrap();
    let ack = |ts| Change::Acked {
        user: "alice".into(),
        uid: PROFILE_UID,
        node: 2,
        profile_ts: Some(ts),
    };
    assert!(matches!(store.change(ack(10)).await, Reply::Uids(_)));
    let pushes = store.pending_pushes(10);
    assert_eq!(
        pushes.len(),
        1,
        "the answer about \"first\" retired the push of \"second\""
    );
    assert_eq!(pushes[0].targets, vec![2]);
    // The answer to the push of "second" retires it.
    assert!(matches!(store.change(ack(20)).await, Reply::Uids(_)));
    assert!(store.pending_pushes(10).is_empty());
}

#[tokio::test]
async fn nothing_a_peer_sends_trips_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let replica = |user: &str| NewMessage {
        user: user.into(),
        body: body("x\r\n"),
        flags: Flags::empty(),
        internal_date: Some(1),
        uid: None,
        seq_hint: 0,
        ts_ms: 1,
        targets: Vec::new(),
        replicas: Vec::new(),
    };
    let refused = |r: Result<u32, StoreError>| match r {
        Err(StoreError::Invalid(why)) => why,
        other => panic!("not refused: {other:?}"),
    };
    // A sequence hint at the top of the range once overflowed the writer's arithmetic.
    let why = refused(
        store
            .store(NewMessage {
                seq_hint: u32::MAX,
                ..replica("a")
            })
            .await,
    );
    assert!(why.contains("sequence hint"), "{why}");
    // More targets or replicas than a record holds once hit an assert in the encoder.
    let why = refused(
        store
            .store(NewMessage {
                targets: (1..=300).collect(),
                ..replica("a")
            })
            .await,
    );
    assert!(why.contains("targets"), "{why}");
    // Flags straight off the wire: too many keywords (an encoder assert), an invalid one, or
    // ones out of order (a log that would not read back the same) are refused.
    for flags in [
        Flags {
            bits: 0,
            keywords: (0..300).map(|i| format!("k{i:03}")).collect(),
        },
        Flags {
            bits: 0,
            keywords: vec!["bad word".into()],
        },
        Flags {
            bits: 0,
            keywords: vec!["b".into(), "a".into()],
        },
        Flags {
            bits: 0xff,
            keywords: Vec::new(),
        },
    ] {
        let why = refused(
            store
                .store(NewMessage {
                    flags: flags.clone(),
                    ..replica("a")
                })
                .await,
        );
        assert!(
            why.contains("keyword") || why.contains("normal form"),
            "{why}"
        );
        assert!(store
            .set_flags_at("a", vec![1], FlagMode::Replace, flags, 1, false)
            .await
            .is_err());
    }
    let why = refused(
        store
            .store(NewMessage {
                replicas: vec![2; 256],
                ..replica("a")
            })
            .await,
    );
    assert!(why.contains("replicas"), "{why}");
    // User names the log cannot hold, UID 0.
    refused(store.store(replica("")).await);
    refused(store.store(replica(&"u".repeat(70_000))).await);
    refused(
        store
            .store(NewMessage {
                uid: Some(0),
                ..replica("a")
            })
            .await,
    );
    assert!(matches!(
        store
            .set_flags_at(
                &"u".repeat(70_000),
                vec![1],
                FlagMode::Add,
                Flags::SEEN,
                1,
                true
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.expunge_owing("a", vec![1; 1_000_001], true).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .set_profile("a", &"p".repeat(2_000), 1, Vec::new())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.acked("", 1, 2).await,
        Err(StoreError::Invalid(_))
    ));
    // The writer carries on: a hint just below the top still gets the last UID there is.
    let uid = store
        .store(NewMessage {
            seq_hint: UID_SEQ_MAX - 1,
            ..replica("a")
        })
        .await
        .unwrap();
    assert_eq!(seq_of(uid), UID_SEQ_MAX);
    let uids = store
        .deliver(
            vec!["b".into()],
            body("still fine\r\n"),
            Flags::empty(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(uids, vec![uid_of(1, 1)]);
    // And the next one in a full mailbox is refused, not wrapped around; others go on.
    assert!(store.store(replica("a")).await.is_err());
    store
        .deliver(vec!["b".into()], body("after\r\n"), Flags::empty(), None)
        .await
        .unwrap();
}

fn open_with(dir: &Path, options: StoreConfig, metrics: Arc<Metrics>) -> Store {
    Store::open(dir, 1, DiskConfig::Real, options, metrics).unwrap()
}

/// Everything a replay must give back, as text: each mailbox's messages (UID, flags, stamp,
/// date, replicas, body), tombstones and highest sequence, pushes and owed changes, profiles.
async fn state(store: &Store, users: &[&str]) -> String {
    let mut out = String::new();
    for user in users {
        let snapshot = store.snapshot(user);
        out += &format!(
            "{user} next {} seq {}\n",
            snapshot.uid_next,
            store.max_seq(user)
        );
        for m in &snapshot.messages {
            let bytes = store.read(m).await.unwrap();
            out += &format!(
                "  {} {:?} {} {} {:?} {}\n",
                m.uid,
                m.flags,
                m.flags_ts,
                m.internal_date,
                m.replicas,
                String::from_utf8_lossy(&bytes[..40])
            );
        }
        let mut gone = store.expunged(user);
        gone.sort_unstable();
        out += &format!("  expunged {gone:?}\n  profile {:?}\n", store.profile(user));
    }
    out += &format!("pending {:?}\n", store.pending_pushes(usize::MAX));
    out += &format!("owed {:?}\n", store.owed_changes(usize::MAX));
    out
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Fills the log with `rounds` of deliveries (some with pending pushes, keywords, owed
/// changes) to users a and b, expunges most, changes flags of what stays; returns the
/// UIDs kept per user.
async fn churn(store: &Store, rounds: u32) {
    let filler = "x".repeat(2000);
    for i in 0..rounds {
        for user in ["a", "b"] {
            let text = format!("message {i:05} of {user} {filler}\r\n");
            let uid = store
                .store(NewMessage {
                    user: user.into(),
                    body: body(&text),
                    flags: Flags::with_keywords(0, &["$label1"]).unwrap(),
                    internal_date: Some(1_700_000_000 + i64::from(i)),
                    uid: None,
                    seq_hint: 0,
                    ts_ms: stamp(1, 1),
                    targets: if i % 7 == 0 { vec![2] } else { vec![] },
                    replicas: vec![1, 2],
                })
                .await
                .unwrap();
            if i % 10 != 3 {
                store
                    .expunge_owing(user, vec![uid], i % 5 == 0)
                    .await
                    .unwrap();
            } else if i % 20 == 3 {
                store
                    .set_flags_at(
                        user,
                        vec![uid],
                        FlagMode::Add,
                        Flags::SEEN,
                        stamp(2, 1),
                        true,
                    )
                    .await
                    .unwrap();
            }
        }
        if i % 50 == 0 {
            store
                .set_profile("a", &format!("pw{i}"), i64::from(i), vec![2, 3])
                .await
                .unwrap();
        }
    }
    // A tombstone for a message never held here, and the newest message of b expunged.
    store.expunge("a", vec![uid_of(900_000, 2)]).await.unwrap();
    let newest = store.snapshot("b").messages.last().unwrap().uid;
    store.expunge("b", vec![newest]).await.unwrap();
}

/// Segments of 64 KiB and no free space kept: compaction comes early and often.
const SMALL: StoreConfig = StoreConfig {
    segment_bytes: 64 * 1024,
    free_bytes_min: 0,
};

fn small_segments(dir: &Path) -> (Store, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (open_with(dir, SMALL, metrics.clone()), metrics)
}

/// Keeps the writer busy (compaction runs between batches) until `done` holds.
async fn until(store: &Store, done: impl Fn() -> bool) {
    wait(store, false, done).await;
}

/// As `until`, and each round also writes a message of user "z" and expunges it: garbage, so
/// compaction keeps coming however much of the log it already reclaimed while `churn` ran (on a
/// slow machine churn takes long and compaction keeps up with it).
async fn until_with_garbage(store: &Store, done: impl Fn() -> bool) {
    wait(store, true, done).await;
}

async fn wait(store: &Store, garbage: bool, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    let filler = "g".repeat(8000);
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "compaction never came"
        );
        store.acked("a", 1, 9).await.unwrap();
        if garbage {
            let uids = store
                .deliver(
                    vec!["z".into()],
                    body(&format!("{filler}\r\n")),
                    Flags::empty(),
                    None,
                )
                .await
                .unwrap();
            store.expunge("z", uids).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn compaction_reclaims_expunged_space_and_a_replay_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = small_segments(dir.path());
    churn(&store, 600).await;
    let written = metrics.message_bytes_stored_total.get();
    until_with_garbage(&store, || metrics.compactions_total.get() >= 10).await;
    // Compaction catches up: the log is at most about twice what is live in it.
    let live = store.stats().bytes;
    until(&store, || log_bytes(dir.path()) <= 2 * live + 3 * 64 * 1024).await;
    assert!(log_bytes(dir.path()) < written / 3, "{written}");
    let before = state(&store, &["a", "b"]).await;
    assert!(before.contains("pending [PendingPush") && before.contains("owed [PendingPush"));
    println!(
        "{} bytes of messages written, log now {} bytes after {} compactions",
        written,
        log_bytes(dir.path()),
        metrics.compactions_total.get()
    );
    drop(store);
    let store = open_with(dir.path(), SMALL, Arc::new(Metrics::new()));
    assert_eq!(state(&store, &["a", "b"]).await, before);
    // The highest UIDs were expunged and their records compacted away: still never reused.
    let seq_b = store.max_seq("b");
    let uid = store
        .deliver(vec!["b".into()], body("after\r\n"), Flags::empty(), None)
        .await
        .unwrap()[0];
    assert_eq!(seq_of(uid), seq_b + 1);
}

#[tokio::test]
async fn a_crash_between_the_copy_and_the_delete_replays_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let (store, metrics) = small_segments(dir.path());
    churn(&store, 300).await;
    // Closed segments never change: keep a copy of each, to put back after compaction has
    // copied them forward and deleted them — what a crash just before the delete leaves.
    let log = dir.path().join("log");
    let mut names: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names.pop();
    for name in &names {
        std::fs::copy(log.join(name), saved.path().join(name)).unwrap();
    }
    until_with_garbage(&store, || {
        names.iter().any(|n| !log.join(n).exists()) && metrics.compactions_total.get() >= 1
    })
    .await;
    let state_after = state(&store, &["a", "b"]).await;
    drop(store);
    for name in &names {
        if !log.join(name).exists() {
            std::fs::copy(saved.path().join(name), log.join(name)).unwrap();
        }
    }
    let store = open_with(dir.path(), SMALL, Arc::new(Metrics::new()));
    assert_eq!(state(&store, &["a", "b"]).await, state_after);
}

#[tokio::test]
async fn retired_tombstones_stay_retired_after_a_restart_and_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (store, metrics) = small_segments(dir.path());
    churn(&store, 200).await;
    let tombstones = store.stats().tombstones;
    assert!(tombstones > 100, "{tombstones}");
    let mut gone = store.expunged("a");
    gone.sort_unstable();
    let (retired, kept) = gone.split_at(gone.len() / 2);
    store.retire("a", retired.to_vec()).await.unwrap();
    assert_eq!(store.expunged("a").len(), kept.len());
    // Compaction carries forward only the tombstones still kept.
    let compactions = metrics.compactions_total.get();
    until_with_garbage(&store, || metrics.compactions_total.get() > compactions + 3).await;
    let before = state(&store, &["a", "b"]).await;
    drop(store);
    let store = open_with(dir.path(), SMALL, Arc::new(Metrics::new()));
    assert_eq!(state(&store, &["a", "b"]).await, before);
    let mut now = store.expunged("a");
    now.sort_unstable();
    assert_eq!(now, kept);
}
