//! The demo's user directory: the built-in accounts (development only) or a file of Argon2id
//! hashes, so the sign-in path is the one a real service would run (PHC strings, constant work
//! for unknown names), without a database.
//!
//! Guarantees:
//! - Production ([`Users::for_deployment`]) never runs on the built-in accounts, whose passwords
//!   are public: it needs a users file.
//! - A users file is checked whole at start-up: a malformed line, a duplicate name, a hash that
//!   is not Argon2id or whose cost exceeds [`MAX_M_COST_KIB`] / [`MAX_T_COST`] / [`MAX_P_COST`]
//!   is refused with its line number (never its hash).
//! - Every Argon2 run of a sign-in holds a permit of a small semaphore ([`HashLimits`]): at most
//!   `permits` hashes (each `m` KiB) run at once and at most `queue` more wait, each at most
//!   `wait`; any other sign-in is refused at once with [`Busy`]. A flood of sign-ins therefore
//!   costs bounded memory and threads instead of one Argon2 buffer per request.
//!
//! The users file (`DEMO_USERS_FILE`) holds one account per line, `name:role:phc`, where role
//! is `user` or `admin` and phc an Argon2id PHC string; blank lines and lines starting with `#`
//! are ignored. `sessionkit-demo hash-password` prints the PHC string of a password read on
//! standard input.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sessionkit::config::AppEnv;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

/// The demo accounts: name, password, administrator. Printed at start-up outside production.
pub const DEMO_USERS: &[(&str, &str, bool)] = &[
    ("alice", "wonderland", false),
    ("bob", "builder", false),
    ("admin", "admin-demo", true),
];

/// Longest user name and password looked at; longer input simply fails to sign in.
const MAX_NAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

/// Highest Argon2 memory cost accepted from a users file (64 MiB): with the default
/// [`HashLimits`], sign-ins never hold more than `permits` times this.
pub const MAX_M_COST_KIB: u32 = 64 * 1024;
/// Highest Argon2 time cost accepted from a users file.
pub const MAX_T_COST: u32 = 10;
/// Highest Argon2 parallelism accepted from a users file.
pub const MAX_P_COST: u32 = 8;

/// How many password checks may run and wait at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashLimits {
    /// Argon2 runs at once. Default: the number of CPUs, between 1 and 4.
    pub permits: usize,
    /// Sign-ins waiting for a permit; past that, [`Busy`] at once. Default: 16.
    pub queue: usize,
    /// Longest wait for a permit before [`Busy`]. Default: 2 seconds.
    pub wait: Duration,
}

impl Default for HashLimits {
    fn default() -> Self {
        Self {
            permits: std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4)),
            queue: 16,
            wait: Duration::from_secs(2),
        }
    }
}

/// Too many sign-ins are being checked: try again shortly (a 503 with `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("too many sign-ins are being checked")
    }
}

impl std::error::Error for Busy {}

/// The semaphores in front of Argon2, and its working memory.
#[derive(Debug)]
struct HashGate {
    /// Held while a hash runs.
    running: Arc<Semaphore>,
    /// Held from admission to the end of the hash: bounds running plus waiting.
    admitted: Arc<Semaphore>,
    wait: Duration,
    memory: Arc<Memory>,
}

/// Argon2 working memory, one buffer per running hash, kept and reused. A fresh `m`-KiB
/// allocation per hash is not freed back in practice: glibc keeps it in the allocating thread's
/// arena and cannot reuse it for the next (64-byte aligned) request, so each blocking thread
/// ends up holding about three buffers (20 hashes under a flood left 358 MB with 2 permits).
/// At most `permits` buffers exist, each as large as the costliest hash checked.
#[derive(Debug, Default)]
struct Memory(Mutex<Vec<Vec<Block>>>);

impl Memory {
    fn take(&self, blocks: usize) -> Vec<Block> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        if buf.len() < blocks {
            buf.resize(blocks, Block::default());
        }
        buf
    }

    fn put(&self, buf: Vec<Block>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf);
    }
}

impl HashGate {
    fn new(limits: HashLimits) -> Self {
        let permits = limits.permits.max(1);
        Self {
            running: Arc::new(Semaphore::new(permits)),
            admitted: Arc::new(Semaphore::new(permits + limits.queue)),
            wait: limits.wait,
            memory: Arc::default(),
        }
    }

    /// Runs `check` on the blocking pool once a permit is free, or refuses.
    async fn run(
        &self,
        check: impl FnOnce(&Memory) -> bool + Send + 'static,
    ) -> Result<bool, Busy> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let running = tokio::time::timeout(self.wait, self.running.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        // The permits move into the blocking task: a client that hangs up does not stop the
        // hash, so the permits must live as long as the hash does, not as long as the request.
        let memory = self.memory.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permits = (admitted, running);
            check(&memory)
        })
        .await
        .unwrap_or(false);
        Ok(ok)
    }
}

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
    /// The accounts are the public [`DEMO_USERS`].
    builtin: bool,
    gate: Arc<HashGate>,
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
        let mut users = Self::from_passwords(DEMO_USERS.iter().copied())?;
        users.builtin = true;
        Ok(users)
    }

    /// The accounts for `app_env`: those of `file` when given, else the built-in ones, which
    /// production refuses.
    ///
    /// # Errors
    /// Production without a file, or a file [`Users::from_file`] refuses.
    pub fn for_deployment(app_env: AppEnv, file: Option<&Path>) -> anyhow::Result<Self> {
        match file {
            Some(path) => Self::from_file(path),
            None if app_env == AppEnv::Production => bail!(
                "APP_ENV=production refuses the built-in demo accounts (their passwords, admin's \
                 included, are public): set DEMO_USERS_FILE to a file of `name:role:argon2id-hash` \
                 lines (see `sessionkit-demo hash-password`)"
            ),
            None => Self::demo(),
        }
    }

    /// Accounts from a users file (see the module documentation for its format).
    ///
    /// # Errors
    /// The file cannot be read, or [`Users::parse`] refuses it; the message names the file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("DEMO_USERS_FILE {}: cannot read it", path.display()))?;
        Self::parse(&text).with_context(|| format!("DEMO_USERS_FILE {}", path.display()))
    }

    /// Accounts from the text of a users file.
    ///
    /// # Errors
    /// A line that is not `name:role:phc`, a name that is empty, too long or holds spaces or
    /// control characters, a role other than `user` or `admin`, a duplicate name, a hash that is
    /// not a well-formed Argon2id PHC string or costs more than the maximums, or no account.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut by_name = BTreeMap::new();
        let mut decoy_params = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(role), Some(phc)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("line {n}: expected `name:role:argon2id-hash`");
            };
            if name.is_empty()
                || name.len() > MAX_NAME
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                bail!("line {n}: a user name has 1 to {MAX_NAME} bytes, no spaces or controls");
            }
            let admin = match role {
                "admin" => true,
                "user" => false,
                _ => bail!("line {n}: the role of {name:?} is neither `user` nor `admin`"),
            };
            let params = check_phc(phc).with_context(|| format!("line {n} ({name:?})"))?;
            decoy_params.get_or_insert(params);
            let user = User {
                name: name.to_owned(),
                admin,
                hash: phc.to_owned(),
            };
            if by_name.insert(name.to_owned(), user).is_some() {
                bail!("line {n}: {name:?} is listed twice");
            }
        }
        let Some(params) = decoy_params else {
            bail!("no account in the file");
        };
        Ok(Self::assemble(
            by_name,
            hash_with(params, "decoy password that nobody has")?,
        ))
    }

    /// The same accounts, with these limits on concurrent password checks.
    #[must_use]
    pub fn with_hash_limits(mut self, limits: HashLimits) -> Self {
        self.gate = Arc::new(HashGate::new(limits));
        self
    }

    /// Whether these are the built-in [`DEMO_USERS`], whose passwords are public.
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    fn assemble(by_name: BTreeMap<String, User>, decoy: String) -> Self {
        Self {
            by_name: Arc::new(by_name),
            decoy: decoy.into(),
            builtin: false,
            gate: Arc::new(HashGate::new(HashLimits::default())),
        }
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
        Ok(Self::assemble(
            by_name,
            hash("decoy password that nobody has")?,
        ))
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
    /// so sign-ins do not stall other requests, behind the [`HashLimits`].
    ///
    /// # Errors
    /// [`Busy`] when no permit was free in time: nothing was checked.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Option<User>, Busy> {
        let user = (name.len() <= MAX_NAME)
            .then(|| self.by_name.get(name))
            .flatten()
            .cloned();
        let hash = user
            .as_ref()
            .map_or_else(|| self.decoy.to_string(), |u| u.hash.clone());
        let password = password.to_owned();
        let ok = self
            .gate
            .run(move |memory| password.len() <= MAX_PASSWORD && verify(&hash, &password, memory))
            .await?;
        Ok(user.filter(|_| ok))
    }
}

/// The Argon2id PHC string of `password` with the default parameters and a random salt: what a
/// users file holds.
///
/// # Errors
/// When the OS gives no randomness for the salt, or hashing fails.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    hash(password)
}

/// The parameters of `phc` when it is an Argon2id PHC string within the cost maximums.
fn check_phc(phc: &str) -> anyhow::Result<Params> {
    let parsed =
        PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("not an argon2id PHC string: {e}"))?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        bail!(
            "the hash is {}, only argon2id is accepted",
            parsed.algorithm
        );
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        bail!("the hash has no salt or no output");
    }
    let params =
        Params::try_from(&parsed).map_err(|e| anyhow::anyhow!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        bail!(
            "argon2 cost m={},t={},p={} exceeds m={MAX_M_COST_KIB},t={MAX_T_COST},p={MAX_P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        );
    }
    Ok(params)
}

fn hash(password: &str) -> anyhow::Result<String> {
    hash_with(Params::default(), password)
}

fn hash_with(params: Params, password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(phc.to_string())
}

/// What `PasswordVerifier::verify_password` does, with working memory from `memory`.
fn verify(phc: &str, password: &str, memory: &Memory) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(hash.algorithm), Params::try_from(&hash))
    else {
        return false;
    };
    let Ok(version) = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let mut blocks = memory.take(params.block_count());
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        &mut blocks[..],
    );
    memory.put(blocks);
    hashed.is_ok() && bool::from(out.ct_eq(expected.as_bytes()))
}
