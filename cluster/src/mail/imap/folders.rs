//! IMAP folders: every folder is a mailbox of its own in the cluster, and a user's folder list
//! is one more mailbox whose messages are the list's entries.
//!
//! - A folder other than INBOX has a number (`id`, also its UIDVALIDITY) and is stored under the
//!   mailbox key `user NUL id`: it is placed, replicated, recovered and served by any node exactly
//!   as INBOX (key `user`) is, with its own UIDs and UIDNEXT. Renaming a folder changes only its
//!   entry, never its messages.
//! - The folder list is the mailbox `user NUL folders`. Each message there is one small JSON
//!   entry: a folder (`id`, name) or a subscription (name). Creating a folder or subscribing
//!   delivers an entry; deleting or unsubscribing expunges it; renaming delivers the new entry and
//!   then expunges the old. So the list replicates, survives `kill -9` and merges after a partition
//!   by the same paths as mail. Entries never change once written, so a node caches them by UID.
//! - Conflicts a partition can leave: one id with two entries (a rename seen on one side only)
//!   shows the newest (highest UID); two ids with one name (created on both sides) shows the
//!   lowest id, the other's messages hidden until it is renamed or deleted on a node that sees it.
//!
//! Names are UTF-8 here and modified UTF-7 on the wire ([`super::mutf7`]); `/` separates levels.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::mail::store::{Flags, StoreError};
use crate::mail::MailService;

/// The hierarchy delimiter.
pub const DELIMITER: char = '/';
/// Folders one user may have (INBOX not counted).
pub const FOLDERS_PER_USER_MAX: usize = 1_000;
/// Subscriptions one user may have.
pub const SUBSCRIPTIONS_MAX: usize = 1_000;
/// Longest folder name, in UTF-8 bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Entries a node's [`EntryCache`] keeps before it starts over.
pub const CACHED_ENTRIES_MAX: usize = 200_000;

/// One entry of a folder list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    Folder { id: u32, name: String },
    Subscribed { name: String },
}

/// Folder-list entries this node has read, by (list key, UID): entries never change. Also the
/// last folder id this node issued.
#[derive(Debug, Default)]
pub struct EntryCache {
    entries: Mutex<HashMap<(String, u32), Entry>>,
    last_id: AtomicU32,
}

/// Folder ids a node issues are congruent to its id modulo this.
const ID_NODE_MODULUS: u32 = 64;

/// The mailbox key of the folder list of `user`.
pub fn list_key(user: &str) -> String {
    format!("{user}\0folders")
}

/// The mailbox key of folder `id` of `user`.
pub fn folder_key(user: &str, id: u32) -> String {
    format!("{user}\0{id}")
}

/// A mailbox a session can open: where it is stored and its UIDVALIDITY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The mailbox key the mail service stores it under.
    pub key: String,
    /// The UTF-8 name (`INBOX` for the inbox).
    pub name: String,
    pub uid_validity: u32,
}

/// A folder as the list shows it.
#[derive(Debug, Clone)]
pub struct Folder {
    pub id: u32,
    /// The UIDs of the list entries that name it (more than one only mid-rename).
    entries: Vec<u32>,
}

/// A user's folder list, resolved from its entries.
#[derive(Debug, Default)]
pub struct FolderList {
    /// Name → folder.
    pub folders: BTreeMap<String, Folder>,
    /// Subscribed name → the entries that say so.
    pub subscriptions: BTreeMap<String, Vec<u32>>,
    /// The highest id any entry names.
    max_id: u32,
}

impl FolderList {
    /// Names that exist, and names implied by a deeper one that exists (shown `\Noselect`).
    pub fn names(&self) -> BTreeMap<String, Attributes> {
        let mut names: BTreeMap<String, Attributes> = self
            .folders
            .keys()
            .map(|n| (n.clone(), Attributes::default()))
            .collect();
        for name in self.folders.keys() {
            let mut at = 0;
            while let Some(i) = name[at..].find(DELIMITER) {
                let parent = &name[..at + i];
                names
                    .entry(parent.to_string())
                    .or_insert(Attributes {
                        noselect: true,
                        children: false,
                    })
                    .children = true;
                at += i + 1;
            }
        }
        names
    }
}

/// LIST attributes of a name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attributes {
    pub noselect: bool,
    pub children: bool,
}

/// Why a folder operation was refused, with the IMAP response code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("[NONEXISTENT] No such mailbox")]
    Nonexistent,
    #[error("[ALREADYEXISTS] Mailbox already exists")]
    AlreadyExists,
    #[error("[CANNOT] {0}")]
    Cannot(&'static str),
    #[error("[LIMIT] {0}")]
    Limit(&'static str),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Checks and normalizes a client's (decoded) name for CREATE or RENAME: one trailing delimiter
/// is dropped (RFC 3501 6.3.3); no empty levels, wildcards or control characters.
pub fn check_name(name: &str) -> Result<String, FolderError> {
    let name = name.strip_suffix(DELIMITER).unwrap_or(name);
    if name.is_empty() {
        return Err(FolderError::Cannot("Empty mailbox name"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(FolderError::Limit("Mailbox name too long"));
    }
    if name.split(DELIMITER).any(str::is_empty) {
        return Err(FolderError::Cannot("Empty hierarchy level in mailbox name"));
    }
    if name.chars().any(|c| c.is_control() || c == '*' || c == '%') {
        return Err(FolderError::Cannot(
            "Mailbox names may not hold wildcards or control characters",
        ));
    }
    Ok(name.to_string())
}

/// Whether a name is INBOX (any case).
pub fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// One user's folders, through the cluster mail service.
pub struct Folders<'a> {
    pub mail: &'a MailService,
    pub cache: &'a EntryCache,
    pub user: &'a str,
}

impl Folders<'_> {
    /// Reads the folder list (entries not yet cached are fetched from their holders).
    pub async fn list(&self) -> Result<FolderList, StoreError> {
        let key = list_key(self.user);
        let snapshot = self.mail.snapshot(&key).await;
        let mut entries = Vec::with_capacity(snapshot.messages.len());
        for meta in &snapshot.messages {
            let cached = self
                .cache
                .entries
                .lock()
                .unwrap()
                .get(&(key.clone(), meta.uid))
                .cloned();
            let entry = match cached {
                Some(e) => e,
                None => {
                    let bytes = match self.mail.read(&key, meta).await {
                        Ok(b) => b,
                        // Expunged meanwhile (a rename), or no holder could be asked: the
                        // list would be wrong without it, so only the first is skipped.
                        Err(StoreError::NotFound) => {
                            let again = self.mail.snapshot(&key).await;
                            if again.messages.iter().any(|m| m.uid == meta.uid) {
                                return Err(StoreError::Failed(
                                    "an entry of the folder list could not be read".into(),
                                ));
                            }
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) else {
                        tracing::warn!(
                            user = self.user,
                            uid = meta.uid,
                            "unreadable folder-list entry skipped"
                        );
                        continue;
                    };
                    let mut cache = self.cache.entries.lock().unwrap();
                    if cache.len() >= CACHED_ENTRIES_MAX {
                        cache.clear();
                    }
                    cache.insert((key.clone(), meta.uid), entry.clone());
                    entry
                }
            };
            entries.push((meta.uid, entry));
        }
        Ok(resolve(entries))
    }

    /// What SELECT, STATUS, APPEND and COPY open: INBOX, or a folder that exists.
    pub async fn open(&self, name: &str) -> Result<Open, FolderError> {
        if is_inbox(name) {
            return Ok(self.inbox());
        }
        let list = self.list().await?;
        let folder = list.folders.get(name).ok_or(FolderError::Nonexistent)?;
        Ok(Open {
            key: folder_key(self.user, folder.id),
            name: name.to_string(),
            uid_validity: folder.id,
        })
    }

    pub fn inbox(&self) -> Open {
        Open {
            key: self.user.to_string(),
            name: "INBOX".into(),
            uid_validity: self.mail.uid_validity(),
        }
    }

    /// CREATE: the folder and any missing superior levels (RFC 3501 6.3.3).
    pub async fn create(&self, name: &str) -> Result<Open, FolderError> {
        let name = check_name(name)?;
        if is_inbox(&name) {
            return Err(FolderError::AlreadyExists);
        }
        let list = self.list().await?;
        if list.folders.contains_key(&name) {
            return Err(FolderError::AlreadyExists);
        }
        let mut missing: Vec<String> = Vec::new();
        let mut at = 0;
        while let Some(i) = name[at..].find(DELIMITER) {
            let parent = &name[..at + i];
            if !list.folders.contains_key(parent) && !is_inbox(parent) {
                missing.push(parent.to_string());
            }
            at += i + 1;
        }
        missing.push(name.clone());
        if list.folders.len() + missing.len() > FOLDERS_PER_USER_MAX {
            return Err(FolderError::Limit("Too many mailboxes"));
        }
        let mut id = 0;
        for level in &missing {
            id = self.next_id(list.max_id);
            self.write(&Entry::Folder {
                id,
                name: level.clone(),
            })
            .await?;
        }
        Ok(Open {
            key: folder_key(self.user, id),
            name,
            uid_validity: id,
        })
    }

    /// DELETE: the folder's entry and its messages. Deeper folders stay (the name then shows as
    /// `\Noselect` while they exist).
    pub async fn delete(&self, name: &str) -> Result<(), FolderError> {
        if is_inbox(name) {
            return Err(FolderError::Cannot("INBOX cannot be deleted"));
        }
        let list = self.list().await?;
        let folder = list.folders.get(name).ok_or(FolderError::Nonexistent)?;
        let key = folder_key(self.user, folder.id);
        let uids: Vec<u32> = self
            .mail
            .snapshot(&key)
            .await
            .messages
            .iter()
            .map(|m| m.uid)
            .collect();
        if !uids.is_empty() {
            self.mail.expunge(&key, uids).await?;
        }
        self.mail
            .expunge(&list_key(self.user), folder.entries.clone())
            .await?;
        Ok(())
    }

    /// RENAME of a folder other than INBOX: it and every folder below it take the new name.
    /// Returns what the folder now is.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), FolderError> {
        let to = check_name(to)?;
        let list = self.list().await?;
        if is_inbox(&to) || list.folders.contains_key(&to) {
            return Err(FolderError::AlreadyExists);
        }
        if !list.folders.contains_key(from) {
            return Err(FolderError::Nonexistent);
        }
        if to.starts_with(&format!("{from}{DELIMITER}")) {
            return Err(FolderError::Cannot(
                "A mailbox cannot be renamed below itself",
            ));
        }
        let below = format!("{from}{DELIMITER}");
        let moving: Vec<(String, Folder)> = list
            .folders
            .iter()
            .filter(|(n, _)| *n == from || n.starts_with(&below))
            .map(|(n, f)| (format!("{to}{}", &n[from.len()..]), f.clone()))
            .collect();
        if moving.iter().any(|(n, _)| n.len() > NAME_BYTES_MAX) {
            return Err(FolderError::Limit("Mailbox name too long"));
        }
        // A folder below that would land on a name taken by one not moving.
        if moving
            .iter()
            .any(|(n, _)| list.folders.contains_key(n) && !(n == from || n.starts_with(&below)))
        {
            return Err(FolderError::AlreadyExists);
        }
        // Superior levels of the new name that do not exist yet are created first.
        let mut at = 0;
        while let Some(i) = to[at..].find(DELIMITER) {
            let parent = &to[..at + i];
            if !list.folders.contains_key(parent) && !is_inbox(parent) {
                self.write(&Entry::Folder {
                    id: self.next_id(list.max_id),
                    name: parent.to_string(),
                })
                .await?;
            }
            at += i + 1;
        }
        let mut old_entries = Vec::new();
        for (name, folder) in moving {
            self.write(&Entry::Folder {
                id: folder.id,
                name,
            })
            .await?;
            old_entries.extend(folder.entries);
        }
        self.mail.expunge(&list_key(self.user), old_entries).await?;
        Ok(())
    }

    /// SUBSCRIBE (to INBOX or a folder that exists).
    pub async fn subscribe(&self, name: &str) -> Result<(), FolderError> {
        let name = if is_inbox(name) {
            "INBOX".to_string()
        } else {
            name.to_string()
        };
        let list = self.list().await?;
        if name != "INBOX" && !list.folders.contains_key(&name) {
            return Err(FolderError::Nonexistent);
        }
        if list.subscriptions.contains_key(&name) {
            return Ok(());
        }
        if list.subscriptions.len() >= SUBSCRIPTIONS_MAX {
            return Err(FolderError::Limit("Too many subscriptions"));
        }
        self.write(&Entry::Subscribed { name }).await
    }

    /// UNSUBSCRIBE (a name that is not subscribed is not an error).
    pub async fn unsubscribe(&self, name: &str) -> Result<(), FolderError> {
        let name = if is_inbox(name) { "INBOX" } else { name };
        let list = self.list().await?;
        if let Some(entries) = list.subscriptions.get(name) {
            self.mail
                .expunge(&list_key(self.user), entries.clone())
                .await?;
        }
        Ok(())
    }

    /// A new folder id (its UIDVALIDITY): the clock's seconds, above every id the list has
    /// named (so a folder deleted and made again gets a greater UIDVALIDITY, RFC 3501 2.3.1.1)
    /// and above every id this node has issued, rounded up to this node's residue modulo 64,
    /// so two sessions — on one node or on two — never make two folders with one id.
    fn next_id(&self, max_id: u32) -> u32 {
        let node = self.mail.config().id % ID_NODE_MODULUS;
        let now = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(u32::MAX / 2);
        let next = |last: u32| {
            let id = now
                .max(max_id.saturating_add(1))
                .max(last.saturating_add(1));
            id.saturating_add((node + ID_NODE_MODULUS - id % ID_NODE_MODULUS) % ID_NODE_MODULUS)
        };
        let last = self
            .cache
            .last_id
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(next(last)))
            .expect("the update always succeeds");
        next(last)
    }

    async fn write(&self, entry: &Entry) -> Result<(), FolderError> {
        let body = serde_json::to_vec(entry).expect("an entry serializes");
        self.mail
            .deliver(
                vec![list_key(self.user)],
                Arc::from(body),
                Flags::empty(),
                None,
            )
            .await?;
        Ok(())
    }
}

/// Resolves entries (UID order) into a list: per id the newest entry's name; per name the lowest
/// id.
fn resolve(entries: Vec<(u32, Entry)>) -> FolderList {
    let mut by_id: BTreeMap<u32, (String, Vec<u32>)> = BTreeMap::new();
    let mut list = FolderList::default();
    for (uid, entry) in entries {
        match entry {
            Entry::Folder { id, name } => {
                list.max_id = list.max_id.max(id);
                let slot = by_id
                    .entry(id)
                    .or_insert_with(|| (name.clone(), Vec::new()));
                // Entries come in UID order: the last one is the newest.
                slot.0 = name;
                slot.1.push(uid);
            }
            Entry::Subscribed { name } => list.subscriptions.entry(name).or_default().push(uid),
        }
    }
    let mut seen = BTreeSet::new();
    for (id, (name, entries)) in by_id {
        if seen.insert(name.clone()) {
            list.folders.insert(name, Folder { id, entries });
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(id: u32, name: &str) -> Entry {
        Entry::Folder {
            id,
            name: name.into(),
        }
    }

    #[test]
    fn the_newest_entry_names_a_folder_and_the_lowest_id_owns_a_name() {
        let list = resolve(vec![
            (64, folder(10, "Sent")),
            (128, folder(11, "Trash")),
            (192, folder(10, "Sent Items")),
            (193, folder(9, "Trash")),
            (
                256,
                Entry::Subscribed {
                    name: "Sent".into(),
                },
            ),
        ]);
        let names: Vec<(&str, u32)> = list
            .folders
            .iter()
            .map(|(n, f)| (n.as_str(), f.id))
            .collect();
        assert_eq!(names, [("Sent Items", 10), ("Trash", 9)]);
        assert_eq!(list.folders["Sent Items"].entries, [64, 192]);
        assert!(list.subscriptions.contains_key("Sent"));
        assert_eq!(list.max_id, 11);
    }

    #[test]
    fn deeper_names_imply_their_parents() {
        let list = resolve(vec![(64, folder(1, "a/b/c")), (65, folder(2, "x"))]);
        let names = list.names();
        assert_eq!(
            names["a"],
            Attributes {
                noselect: true,
                children: true
            }
        );
        assert!(names["a/b"].noselect && names["a/b"].children);
        assert_eq!(names["a/b/c"], Attributes::default());
        assert_eq!(names["x"], Attributes::default());
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("Sent/").unwrap(), "Sent");
        for bad in ["", "/", "a//b", "/a", "a*", "b%", "a\tb", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
