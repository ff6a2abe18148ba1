//! Entry points of the fuzz targets (`fuzz/`, run by `ci/fuzz.sh` with cargo-fuzz on nightly)
//! and of the tests that replay their saved corpora on stable (`cluster/tests/fuzz_corpus.rs`).
//! Each takes arbitrary bytes and must never panic, loop or allocate without bound.

/// A target's entry point.
pub type Entry = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/` name them.
pub const TARGETS: [(&str, Entry); 7] = [
    ("imap_command", imap_command),
    ("pop3_command", pop3_command),
    ("message", message),
    ("smtp_path", smtp_path),
    ("store_record", store_record),
    ("peer_message", peer_message),
    ("admin_json", admin_json),
];

/// One IMAP command line, literals inlined.
pub fn imap_command(data: &[u8]) {
    crate::mail::imap::fuzz_command(data);
}

/// One POP3 command line (and TOP and dot-stuffing over the same bytes).
pub fn pop3_command(data: &[u8]) {
    crate::mail::pop3::fuzz_command(data);
}

/// A stored message through MIME, ENVELOPE (addresses), BODYSTRUCTURE, sections and SEARCH.
pub fn message(data: &[u8]) {
    crate::mail::imap::fuzz_message(data);
}

/// SMTP MAIL/RCPT arguments.
pub fn smtp_path(data: &[u8]) {
    crate::mail::smtp::fuzz_path(data);
}

/// A record of the mail log, as recovery reads it back.
pub fn store_record(data: &[u8]) {
    let _ = crate::mail::store::record::decode(data);
    let _ = crate::mail::store::record::decode_payload(data);
    if let Ok(header) = <[u8; crate::mail::store::record::FRAME_HEADER_BYTES]>::try_from(
        &data[..data
            .len()
            .min(crate::mail::store::record::FRAME_HEADER_BYTES)],
    ) {
        let _ = crate::mail::store::record::decode_header(&header);
    }
}

/// What a peer may send: a node-to-node message, decoded as the transport decodes it.
pub fn peer_message(data: &[u8]) {
    let _ = postcard::from_bytes::<crate::core::peering::PeerMessage<crate::mail::wire::MailMessage>>(
        data,
    );
}

/// The admin API's JSON body of `POST /faults`, parsed and applied to the defaults.
pub fn admin_json(data: &[u8]) {
    if let Ok(patch) = serde_json::from_slice::<crate::core::faults::FaultsPatch>(data) {
        let _ = crate::core::faults::Faults::default().patched(&patch);
    }
}
