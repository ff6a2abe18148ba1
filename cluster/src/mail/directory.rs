//! Who the node's users are: address lookup for SMTP and password checks for POP3 and IMAP.
//!
//! Users are the provisioned range from the configuration, plus the user profiles created or
//! changed through the admin API (hard state, replicated to every node; a profile's password
//! overrides the range's). User names are case-insensitive and are canonicalised to lower case;
//! that canonical name is the mailbox key everywhere.

use crate::mail::config::Users;
use crate::mail::store::Store;

/// Longest user name (local part) a profile may have.
pub const USER_BYTES_MAX: usize = 64;

/// Whether `name` can be a user name: lower-case letters, digits, `.`, `_`, `-`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= USER_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Result of looking up a recipient address.
#[derive(Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A provisioned user; the canonical mailbox name.
    Local(String),
    /// The domain is ours but no such user exists.
    UnknownUser,
    /// Not our domain: accepting it would make the node an open relay.
    Relay,
}

#[derive(Clone)]
pub struct Directory {
    domain: String,
    users: Users,
    /// Where user profiles live, if this directory consults them.
    profiles: Option<Store>,
}

impl Directory {
    pub fn new(domain: &str, users: Users) -> Directory {
        Directory {
            domain: domain.to_ascii_lowercase(),
            users,
            profiles: None,
        }
    }

    /// Also knows the users whose profiles are in `store`.
    pub fn with_profiles(mut self, store: Store) -> Directory {
        self.profiles = Some(store);
        self
    }

    fn profile_password(&self, user: &str) -> Option<String> {
        self.profiles
            .as_ref()
            .and_then(|s| s.profile(user))
            .map(|(password, _)| password)
    }

    /// Whether `user` (canonical) exists: `Some("profile")` or `Some("range")`.
    pub fn exists(&self, user: &str) -> Option<&'static str> {
        if self.profile_password(user).is_some() {
            Some("profile")
        } else if self.users.contains(user) {
            Some("range")
        } else {
            None
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Classifies an SMTP recipient address (`local@domain`, already stripped of `<>`).
    pub fn recipient(&self, address: &str) -> Recipient {
        let Some((local, domain)) = address.rsplit_once('@') else {
            // RFC 5321 requires a domain, except for "Postmaster", which we do not host.
            return Recipient::UnknownUser;
        };
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return Recipient::Relay;
        }
        let local = local.to_ascii_lowercase();
        if self.exists(&local).is_some() {
            Recipient::Local(local)
        } else {
            Recipient::UnknownUser
        }
    }

    /// Checks a login (`user` or `user@domain`) and password; returns the canonical user name.
    pub fn authenticate(&self, login: &str, password: &str) -> Option<String> {
        let local = match login.rsplit_once('@') {
            Some((local, domain)) if domain.eq_ignore_ascii_case(&self.domain) => local,
            Some(_) => return None,
            None => login,
        };
        let local = local.to_ascii_lowercase();
        let expected = match self.profile_password(&local) {
            Some(p) => p,
            None if self.users.contains(&local) => self.users.password.clone(),
            None => return None,
        };
        // Compare every byte so the time taken does not say how much of the password matched.
        constant_time_eq(password.as_bytes(), expected.as_bytes()).then_some(local)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        Directory::new(
            "Example.Test",
            Users {
                pattern: "user{n}".into(),
                first: 0,
                count: 3,
                password: "pw".into(),
            },
        )
    }

    #[test]
    fn recipients_are_classified() {
        let d = dir();
        assert_eq!(
            d.recipient("User1@example.test"),
            Recipient::Local("user1".into())
        );
        assert_eq!(d.recipient("user9@example.test"), Recipient::UnknownUser);
        assert_eq!(d.recipient("user1@elsewhere.test"), Recipient::Relay);
        assert_eq!(d.recipient("user1"), Recipient::UnknownUser);
    }

    #[test]
    fn logins_are_checked() {
        let d = dir();
        assert_eq!(d.authenticate("user2", "pw").as_deref(), Some("user2"));
        assert_eq!(
            d.authenticate("USER2@example.test", "pw").as_deref(),
            Some("user2")
        );
        assert_eq!(d.authenticate("user2", "wrong"), None);
        assert_eq!(d.authenticate("user3", "pw"), None);
        assert_eq!(d.authenticate("user2@other.test", "pw"), None);
    }
}
