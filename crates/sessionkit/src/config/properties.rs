//! Property test of the settings added beside the seeds' names (`seeds.rs` covers those): any
//! values of them are read without a panic, and no secret among them shows in an error or in
//! the configuration's `Debug`.

use super::tests::{from, GOOD};

/// The variables of device binding, header tokens, TLS, encryption and compression at rest,
/// the migration and the Flask bridge.
const NAMES: &[&str] = &[
    "SESSION_BINDING",
    "SESSION_BINDING_ACTION",
    "SESSION_TRUSTED_PROXIES",
    "SESSION_HEADER",
    "SESSION_ENCRYPTION",
    "SESSION_COMPRESSION",
    "REDIS_TLS_CA_FILE",
    "SESSION_MIGRATE_FROM",
    "SESSION_IMPORT_FLASK",
    "SESSION_SHARE_FLASK",
    "FLASK_SESSION_COOKIE_NAME",
    "FLASK_SESSION_KEY_PREFIX",
    "FLASK_USER_KEY",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    #[test]
    fn any_values_of_the_new_settings_are_read_without_panic_or_secret(
        values in proptest::collection::vec(proptest::option::of("\\PC{0,40}"), NAMES.len()),
        url_tail in "[a-z0-9./:@?=-]{0,30}",
        suffix in "[a-zA-Z0-9]{0,16}",
    ) {
        let secret = format!("Qm7Marker{suffix}");
        let migrate = format!("postgres://u:{secret}@{url_tail}");
        let mut vars = vec![("SECRET_KEY", GOOD), ("FLASK_SECRET_KEY", secret.as_str())];
        for (name, value) in NAMES.iter().zip(&values) {
            if let Some(v) = value {
                vars.push((name, v.as_str()));
            }
        }
        // A URL holding the secret as its password, for the migration or the Flask import.
        let slot = if suffix.len() % 2 == 0 { "SESSION_MIGRATE_FROM" } else { "SESSION_IMPORT_FLASK" };
        vars.retain(|(n, _)| *n != slot);
        vars.push((slot, migrate.as_str()));
        let shown = match from(&vars) {
            Ok(c) => format!("{c:?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        proptest::prop_assert!(!shown.contains("Qm7Marker"), "{}", shown);
    }
}
