//! The users file (`DEMO_USERS_FILE`): a bad one is refused at start-up with a clear error, and
//! whatever bytes it holds, parsing never panics.

use super::*;

#[test]
fn a_bad_users_file_is_refused_at_start_up() {
    let good = hash_password("pw").unwrap();
    let cases: &[(&str, String)] = &[
        ("no account", "# nothing here\n\n".to_owned()),
        ("line 1", format!("alice:{good}\n")),
        ("line 2", format!("alice:user:{good}\nbob:root:{good}\n")),
        ("line 1", format!("al ice:user:{good}\n")),
        ("line 1", format!(":user:{good}\n")),
        ("line 1", format!("{}:user:{good}\n", "n".repeat(65))),
        ("listed twice", format!("a:user:{good}\na:admin:{good}\n")),
        (
            "argon2id",
            "a:user:$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\n".to_owned(),
        ),
        (
            "only argon2id",
            format!("a:user:{}\n", good.replacen("argon2id", "argon2i", 1)),
        ),
        (
            "argon2id",
            "a:user:$pbkdf2-sha256$29000$N2Zs$RCgMpA4QGZTO8Sq7z6VWRBUs6vW8bZrSbTy7vtPnOJk\n"
                .to_owned(),
        ),
        (
            "exceeds",
            format!("a:user:{}\n", good.replacen("m=19456", "m=4194304", 1)),
        ),
        (
            "exceeds",
            format!("a:user:{}\n", good.replacen("t=2", "t=1000", 1)),
        ),
        (
            "line 1",
            "a:user:$argon2id$v=19$m=19456,t=2,p=1$bm9wZQ\n".to_owned(),
        ),
        ("line 1", "a:user:plaintext-password\n".to_owned()),
    ];
    for (expected, text) in cases {
        let err = format!("{:#}", Users::parse(text).unwrap_err());
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(!err.contains(&good), "the hash is not echoed: {err}");
    }
    // The binary exits with the message.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users");
    std::fs::write(
        &path,
        format!("ok:user:{good}\nbad:user:$2b$12$abcdefghij\n"),
    )
    .unwrap();
    let out = run_to_exit(demo_command(
        dir.path(),
        &[
            ("SECRET_KEY", SECRET),
            ("DEMO_USERS_FILE", path.to_str().unwrap()),
            ("PORT", "0"),
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("DEMO_USERS_FILE") && stderr.contains("line 2"),
        "{stderr}"
    );
    let missing = run_to_exit(demo_command(
        dir.path(),
        &[
            ("SECRET_KEY", SECRET),
            ("DEMO_USERS_FILE", "/nonexistent/users"),
            ("PORT", "0"),
        ],
    ));
    assert!(!missing.status.success());
    // A well-formed file works in development too, and the built-in accounts are then gone.
    let users = Users::parse(&format!("# c\nok:admin:{good}\n")).unwrap();
    assert!(!users.is_builtin() && users.get("ok").unwrap().admin);
    assert!(users.get("alice").is_none());
}

/// `DEMO_USERS_FILE` is read at start-up: whatever bytes it holds, parsing answers (accounts or a
/// clear error) and never panics, and an error names a line or the file's emptiness, never a
/// hash from it.
#[test]
fn any_users_file_parses_or_is_refused_without_a_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    let phc_like = prop_oneof![
        any::<String>(),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            "[A-Za-z0-9+/=$,]{0,40}"
        )
            .prop_map(|(m, t, p, rest)| format!("$argon2id$v=19$m={m},t={t},p={p}${rest}")),
        Just("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$".to_owned()),
    ];
    let line = prop_oneof![
        any::<String>(),
        ("[^:\n]{0,80}", "user|admin|[^:\n]{0,8}", phc_like)
            .prop_map(|(n, r, h)| format!("{n}:{r}:{h}")),
        Just("# a comment".to_owned()),
    ];
    let file = prop::collection::vec(line, 0..6).prop_map(|l| l.join("\n"));
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 256,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    runner
        .run(&file, |text| {
            if let Err(e) = Users::parse(&text) {
                let msg = format!("{e:#}");
                prop_assert!(msg.contains("line ") || msg.contains("no account"), "{msg}");
                prop_assert!(!msg.contains("$argon2id$v=19$m=19456"), "{msg}");
            }
            Ok(())
        })
        .unwrap();
}
