//! What the mail service's nodes say to each other: requests and their responses (matched by
//! id), mail-map reports, and load beacons. Plain data; no behaviour.

use serde::{Deserialize, Serialize};

use crate::mail::store::{FlagMode, Flags, MessageMeta};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MailMessage {
    Request {
        id: u64,
        request: Request,
    },
    Response {
        id: u64,
        response: Response,
    },
    /// To a user's manager: `node` holds messages of these users (user, highest UID seq).
    /// Sent for the view of `epoch` after every view change, in chunks.
    Fragments {
        epoch: u64,
        node: u32,
        users: Vec<(String, u32)>,
        /// The last chunk of this node's report for `epoch`.
        last: bool,
    },
    /// To a user's manager: `nodes` now hold messages of `user`, up to UID seq `max_seq`.
    AddFragment {
        user: String,
        nodes: Vec<u32>,
        max_seq: u32,
    },
    /// The sender's pending disk I/O, what dynamic placement balances on.
    Load {
        pending_io: u64,
    },
    /// Every replica has these expunges of `user`: their tombstones may go.
    Retire {
        user: String,
        uids: Vec<u32>,
    },
}

/// A message body to store, new or as a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreMessage {
    pub user: String,
    #[serde(with = "crate::core::bytes_serde")]
    pub body: Vec<u8>,
    pub flags: Flags,
    pub internal_date: i64,
    pub uid: Option<u32>,
    pub seq_hint: u32,
    pub ts_ms: i64,
    pub targets: Vec<u32>,
    /// Every node meant to hold a copy.
    pub replicas: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// To the manager: which nodes hold `user`'s mailbox.
    Locate { user: String },
    /// Store a message (the first replica assigns its UID and logs pushes to `targets`).
    Store(StoreMessage),
    /// This node's fragment of `user`'s mailbox, and the UIDs it knows were expunged.
    List { user: String },
    /// One message body.
    Fetch { user: String, uid: u32 },
    /// Change flags of the messages of `uids` this node holds; with `owe`, the result is owed
    /// to each message's other replicas until they acknowledge it.
    SetFlags {
        user: String,
        uids: Vec<u32>,
        mode: FlagMode,
        flags: Flags,
        ts_ms: i64,
        owe: bool,
    },
    /// Store a user profile (newest `ts_ms` wins).
    Profile {
        user: String,
        password: String,
        ts_ms: i64,
    },
    /// Remove the messages of `uids` this node holds (and remember they are gone); with `owe`,
    /// each removal is owed to the message's other replicas until they acknowledge it.
    Expunge {
        user: String,
        uids: Vec<u32>,
        owe: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Located {
        nodes: Vec<u32>,
        max_seq: u32,
    },
    Stored {
        uid: u32,
    },
    Listing {
        messages: Vec<MessageMeta>,
        expunged: Vec<u32>,
        max_seq: u32,
    },
    Body(#[serde(with = "crate::core::bytes_serde")] Vec<u8>),
    Flags(Vec<(u32, Flags)>),
    Removed(Vec<u32>),
    NotFound,
    Failed(String),
}
