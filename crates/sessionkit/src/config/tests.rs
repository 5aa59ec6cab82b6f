//! The configuration's defaults and setters: code and environment agree, order does not matter.

use std::collections::HashMap;

use super::*;

pub(crate) const GOOD: &str = "Zq3x9v0Lr8TtYp2Wm5Nc7Hb1Jd4Kf6Gs8Ae0Qw";

/// The configuration of `vars`. Without `SESSION_FILE_DIR`, a fresh temporary folder stands
/// in for `./data`: no test writes a development key into the crate's folder.
pub(crate) fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let temp = tempfile::tempdir().unwrap();
    m.entry("SESSION_FILE_DIR".into())
        .or_insert_with(|| temp.path().join("data").to_str().unwrap().to_owned());
    Config::from_lookup(|k| m.get(k).cloned())
}

#[test]
fn code_and_environment_have_the_same_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().join("data");
    let from_env = from(&[
        ("SECRET_KEY", GOOD),
        ("SESSION_FILE_DIR", dir.to_str().unwrap()),
    ])
    .unwrap();
    let in_code = Config::new(GOOD).with_file_dir(&dir);
    assert_eq!(format!("{from_env:?}"), format!("{in_code:?}"));
    assert_eq!(in_code.limit.policy, LimitPolicy::EvictOldest);
    // Setting only the maximum, in code or from the environment, gives the same policy.
    let from_env = from(&[
        ("SECRET_KEY", GOOD),
        ("SESSION_FILE_DIR", dir.to_str().unwrap()),
        ("SESSION_MAX_PER_USER", "3"),
    ])
    .unwrap();
    let in_code = in_code.with_max_per_user(Some(3));
    assert_eq!(format!("{from_env:?}"), format!("{in_code:?}"));
}

#[test]
fn setters_do_not_depend_on_call_order() {
    type Setter = fn(Config) -> Config;
    let setters: [Setter; 4] = [
        |c| c.with_idle_timeout(Duration::from_secs(40)),
        |c| c.with_touch_interval(Duration::from_secs(7)),
        |c| c.with_cookie_secure(false),
        |c| c.with_cookie_name("sid"),
    ];
    let mut reference = None;
    // Every order of the four setters.
    for p in 0..24_usize {
        let mut left: Vec<Setter> = setters.to_vec();
        let mut c = Config::new(GOOD);
        let mut k = p;
        for n in (1..=4).rev() {
            c = left.remove(k % n)(c);
            k /= n;
        }
        let seen = format!("{c:?}");
        assert_eq!(c.touch_interval(), Duration::from_secs(7));
        assert_eq!(c.cookie_name(), "sid");
        match &reference {
            None => reference = Some(seen),
            Some(r) => assert_eq!(r, &seen, "order {p}"),
        }
    }
    // The derived defaults follow the setting they derive from, set before or after.
    let c = Config::new(GOOD).with_cookie_secure(false);
    assert_eq!(c.cookie_name(), "session");
    let c = Config::new(GOOD).with_idle_timeout(Duration::from_secs(40));
    assert_eq!(c.touch_interval(), Duration::from_secs(10));
}
