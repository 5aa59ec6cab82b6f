//! Decoding what the server sends (pushes and replies, cut anywhere) and mapping keys back.

use std::io::{ErrorKind, Read};

use super::transport::decode_ready;
use super::*;

#[test]
fn maps_redis_keys_to_storage_keys() {
    let k = "ab".repeat(32);
    assert_eq!(
        storage_key_of(format!("sk:s:{k}").as_bytes()).map(|s| s.as_str().to_owned()),
        Some(k.clone())
    );
    assert!(storage_key_of(format!("sk:{{u:{k}}}:s:{k}").as_bytes()).is_some());
    assert!(storage_key_of(format!("sk:{{u:{k}}}:i").as_bytes()).is_none());
    assert!(storage_key_of(b"short").is_none());
}

/// `bytes`, then "would block".
fn feed(parser: &mut redis::Parser, bytes: &[u8]) -> Result<Vec<redis::Value>, ()> {
    struct Blocked;
    impl Read for Blocked {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(ErrorKind::WouldBlock.into())
        }
    }
    let mut out = Vec::new();
    decode_ready(parser, bytes.chain(Blocked), &mut out).map(|()| out)
}

fn is_invalidation(v: &redis::Value, n: usize) -> bool {
    matches!(v, redis::Value::Push { kind: redis::PushKind::Invalidate, data }
            if matches!(&data[..], [redis::Value::Array(keys)] if keys.len() == n))
}

#[test]
fn decodes_pushes_and_replies_cut_anywhere() {
    let msg = b">2\r\n$10\r\ninvalidate\r\n*2\r\n$3\r\nk:1\r\n$3\r\nk:2\r\n+PONG\r\n";
    for cut in 0..=msg.len() {
        let mut parser = redis::Parser::new();
        let mut got = feed(&mut parser, &msg[..cut]).unwrap();
        got.extend(feed(&mut parser, &msg[cut..]).unwrap());
        assert_eq!(got.len(), 2, "cut {cut}: {got:?}");
        assert!(is_invalidation(&got[0], 2), "cut {cut}: {got:?}");
        assert!(matches!(&got[1], redis::Value::SimpleString(s) if s == "PONG"));
    }
    // After FLUSHALL / FLUSHDB the invalidation is null: the tracker flushes on it.
    let got = feed(
        &mut redis::Parser::new(),
        b">2\r\n$10\r\ninvalidate\r\n_\r\n%1\r\n+a\r\n:1\r\n-ERR x\r\n",
    )
    .unwrap();
    assert!(
        matches!(&got[0], redis::Value::Push { kind: redis::PushKind::Invalidate, data }
            if matches!(&data[..], [redis::Value::Nil]))
    );
    assert!(matches!(&got[1], redis::Value::Map(m) if m.len() == 1));
    assert!(matches!(&got[2], redis::Value::ServerError(_)));
}

/// RESP-looking bytes: type bytes, lengths (huge and negative ones too), line ends, the
/// words of an invalidation, and any byte at all.
fn resp_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let token = prop_oneof![
        3 => proptest::sample::select(&b"*$>%|~=!(,#_:+-"[..]).prop_map(|b| vec![b]),
        3 => prop_oneof![
            (0i64..70).boxed(),
            Just(-1i64).boxed(),
            Just(i64::MAX).boxed(),
            Just(i64::MIN).boxed(),
            any::<i64>().boxed(),
        ]
        .prop_map(|n| n.to_string().into_bytes()),
        4 => Just(b"\r\n".to_vec()),
        1 => proptest::sample::select(vec![
            b"invalidate".to_vec(),
            b"txt:".to_vec(),
            b"t".to_vec(),
            b"1.5".to_vec(),
            "sk:s:".repeat(13).into_bytes(),
        ]),
        2 => proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

/// One RESP3 value as a server sends it: an invalidation (of keys of any bytes, or null),
/// a status, an integer, a bulk string of any bytes, or an array of these.
fn resp_frame() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let bulk = |b: &[u8]| {
        [
            format!("${}\r\n", b.len()).into_bytes(),
            b.to_vec(),
            b"\r\n".to_vec(),
        ]
        .concat()
    };
    let leaf = prop_oneof![
        "[a-zA-Z ]{0,12}".prop_map(|t| format!("+{t}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..100).prop_map(move |b| bulk(&b)),
        Just(b"_\r\n".to_vec()),
    ];
    let invalidation = prop_oneof![
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..5).prop_map(
            move |keys| {
                let mut out =
                    format!(">2\r\n$10\r\ninvalidate\r\n*{}\r\n", keys.len()).into_bytes();
                for k in &keys {
                    out.extend(bulk(k));
                }
                out
            }
        ),
        Just(b">2\r\n$10\r\ninvalidate\r\n_\r\n".to_vec()),
    ];
    let array = proptest::collection::vec(leaf.clone(), 0..4)
        .prop_map(|items| [format!("*{}\r\n", items.len()).into_bytes(), items.concat()].concat());
    prop_oneof![leaf, invalidation, array]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Whatever the server sends, cut anywhere, then a `PONG`: decoding never panics, and
    /// bytes that decode at once decode to the same values in pieces, so a value cut
    /// between two reads is neither lost nor doubled. Bytes that are not RESP break the
    /// connection at once when they arrive whole; in pieces, redis-rs's parser may instead
    /// drop them (an error at the end of the bytes read so far is taken for "more to
    /// come"): the connection then stays up, and the `PING` check still declares it lost
    /// if the garbage swallowed replies.
    #[test]
    fn any_bytes_cut_anywhere_decode_as_they_do_whole(
        bytes in resp_bytes(),
        cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..6),
    ) {
        let mut bytes = bytes;
        bytes.extend_from_slice(b"+PONG\r\n");
        let whole = feed(&mut redis::Parser::new(), &bytes);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        let mut parser = redis::Parser::new();
        let mut pieces = Ok(Vec::new());
        for w in at.windows(2) {
            match feed(&mut parser, &bytes[w[0]..w[1]]) {
                Ok(v) => {
                    if let Ok(all) = &mut pieces {
                        all.extend(v);
                    }
                }
                Err(()) => {
                    pieces = Err(());
                    break;
                }
            }
        }
        if let Ok(all) = &whole {
            proptest::prop_assert_eq!(Ok(all), pieces.as_ref());
        }
    }

    /// What a server sends (invalidations among replies), cut anywhere: exactly the values
    /// sent, in order, none lost, none doubled.
    #[test]
    fn values_cut_anywhere_decode_whole_and_in_order(
        frames in proptest::collection::vec(resp_frame(), 1..8),
        cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..8),
    ) {
        let bytes = frames.concat();
        let whole = feed(&mut redis::Parser::new(), &bytes);
        proptest::prop_assert_eq!(whole.as_ref().map(Vec::len), Ok(frames.len()));
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        let mut parser = redis::Parser::new();
        let mut pieces = Vec::new();
        for w in at.windows(2) {
            let got = feed(&mut parser, &bytes[w[0]..w[1]]);
            proptest::prop_assert!(got.is_ok());
            pieces.extend(got.unwrap_or_default());
        }
        proptest::prop_assert_eq!(whole, Ok(pieces));
    }
}

#[test]
fn garbage_or_a_closed_socket_breaks_the_connection() {
    assert!(feed(&mut redis::Parser::new(), b"?\r\n").is_err());
    assert!(feed(&mut redis::Parser::new(), b"*1\r\n$x\r\n").is_err());
    // The socket ends (read returns 0) in the middle of a value.
    let mut out = Vec::new();
    assert!(decode_ready(&mut redis::Parser::new(), &b"$5\r\nab"[..], &mut out).is_err());
}
