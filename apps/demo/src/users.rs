//! The demo's user directory: a few fixed accounts whose passwords are hashed with Argon2id at
//! start-up, so the sign-in path is the one a real service would run (PHC strings, constant work
//! for unknown names), without a database.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// The demo accounts: name, password, administrator. Printed at start-up outside production.
pub const DEMO_USERS: &[(&str, &str, bool)] = &[
    ("alice", "wonderland", false),
    ("bob", "builder", false),
    ("admin", "admin-demo", true),
];

/// Longest user name and password looked at; longer input simply fails to sign in.
const MAX_NAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

/// One account.
#[derive(Clone)]
pub struct User {
    /// The login name, also the session's user ID.
    pub name: String,
    /// Whether the account may open the admin page.
    pub admin: bool,
    /// Argon2id PHC string.
    hash: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// The user directory. Cheap to clone.
#[derive(Clone)]
pub struct Users {
    by_name: Arc<BTreeMap<String, User>>,
    /// Verified against when the name is unknown, so both cases cost one Argon2 run and the
    /// response time does not tell which names exist.
    decoy: Arc<str>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_name.values()).finish()
    }
}

impl Users {
    /// The [`DEMO_USERS`], hashed now.
    ///
    /// # Errors
    /// When the OS gives no randomness for the salts, or hashing fails.
    pub fn demo() -> anyhow::Result<Self> {
        Self::from_passwords(DEMO_USERS.iter().copied())
    }

    /// Accounts from `(name, password, admin)` triples, hashed now.
    ///
    /// # Errors
    /// When the OS gives no randomness for the salts, or hashing fails.
    pub fn from_passwords<'a>(
        accounts: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) -> anyhow::Result<Self> {
        let mut by_name = BTreeMap::new();
        for (name, password, admin) in accounts {
            let user = User {
                name: name.to_owned(),
                admin,
                hash: hash(password)?,
            };
            by_name.insert(name.to_owned(), user);
        }
        Ok(Self {
            by_name: Arc::new(by_name),
            decoy: hash("decoy password that nobody has")?.into(),
        })
    }

    /// The account called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// Account names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Checks a name and password; the account when they match. Runs Argon2 on the blocking pool
    /// so sign-ins do not stall other requests.
    pub async fn authenticate(&self, name: &str, password: &str) -> Option<User> {
        let user = (name.len() <= MAX_NAME)
            .then(|| self.by_name.get(name))
            .flatten()
            .cloned();
        let hash = user
            .as_ref()
            .map_or_else(|| self.decoy.to_string(), |u| u.hash.clone());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            password.len() <= MAX_PASSWORD && verify(&hash, &password)
        })
        .await
        .unwrap_or(false);
        user.filter(|_| ok)
    }
}

fn hash(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let phc = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(phc.to_string())
}

fn verify(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}
