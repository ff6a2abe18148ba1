//! Replays every fuzz target's saved corpus (`fuzz/corpus/TARGET/`: seeds, inputs the fuzzer
//! kept, and every crasher it ever found, kept as a regression case) through the same entry
//! points the fuzz targets call, on stable: whatever once crashed must not crash again.

use std::path::PathBuf;

use cluster::fuzzing::TARGETS;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_saved_input_of_every_target_runs_without_a_panic() {
    let mut total = 0;
    for (target, run) in TARGETS {
        let dir = corpus(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "{target}: no corpus in {}",
            dir.display()
        );
        for file in &files {
            let data = std::fs::read(file).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("{target}: {} panics", file.display());
            }
        }
        eprintln!("{target}: {} input(s)", files.len());
        total += files.len();
    }
    assert!(total >= TARGETS.len());
}

/// Writes seed inputs that need the crate to make (log records, peer messages):
/// `cargo test -p cluster --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    use cluster::core::peering::PeerMessage;
    use cluster::mail::store::record::{encode, Record};
    use cluster::mail::store::Flags;
    use cluster::mail::wire::{MailMessage, Request, Response, StoreMessage};
    let records = [
        Record::Deliver {
            user: "user1".into(),
            uid: 65,
            internal_date: 1_700_000_000,
            flags: Flags::SEEN,
            ts_ms: 5,
            targets: vec![2, 3],
            replicas: vec![1, 2, 3],
            body: std::sync::Arc::from(&b"Subject: x\r\n\r\nbody\r\n"[..]),
        },
        Record::Expunge {
            user: "user1".into(),
            uids: vec![65, 129],
        },
        Record::Deliver {
            user: "user1\u{0}1700000000".into(),
            uid: 66,
            internal_date: 1_700_000_000,
            flags: Flags::with_keywords(1, &["$Forwarded", "$label1"]).unwrap(),
            ts_ms: 5,
            targets: vec![2],
            replicas: vec![1, 2],
            body: std::sync::Arc::from(&b"Subject: x\r\n\r\nbody\r\n"[..]),
        },
        Record::Flags {
            user: "user1".into(),
            uid: 65,
            flags: Flags::with_keywords(8, &["$Junk"]).unwrap(),
            ts_ms: 6,
        },
    ];
    for (i, r) in records.iter().enumerate() {
        let mut out = Vec::new();
        encode(r, &mut out);
        std::fs::write(corpus("store_record").join(format!("seed{i}")), out).unwrap();
    }
    let messages: Vec<PeerMessage<MailMessage>> = vec![
        PeerMessage::Service(MailMessage::Request {
            id: 1,
            request: Request::Store(StoreMessage {
                user: "user1".into(),
                body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
                flags: Flags::with_keywords(0, &["$hello"]).unwrap(),
                internal_date: 1,
                uid: Some(65),
                seq_hint: 1,
                ts_ms: 1,
                targets: vec![],
                replicas: vec![1, 2],
            }),
        }),
        PeerMessage::Service(MailMessage::Response {
            id: 2,
            response: Response::Body(b"hello".to_vec()),
        }),
    ];
    for (i, m) in messages.iter().enumerate() {
        let bytes = postcard::to_stdvec(m).unwrap();
        std::fs::write(corpus("peer_message").join(format!("seed{i}")), bytes).unwrap();
    }
}
