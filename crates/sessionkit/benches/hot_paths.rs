//! Criterion benchmarks of the per-request hot paths: ID generation, cookie verification, and
//! the record codec.
#![allow(missing_docs, clippy::unwrap_used)]
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use sessionkit::id::SessionId;
use sessionkit::store::{Record, Value};
use sessionkit::test_util::{find_cookie, CookieKeys, Presented};

fn record_of(bytes: usize) -> Record {
    let mut r = Record::default();
    r.meta.user_id = Some("42".into());
    let mut i = 0;
    while r.data_size() < bytes {
        r.data.insert(
            format!("key{i}"),
            Value::to_json(&format!("value number {i} ....")).unwrap(),
        );
        i += 1;
    }
    r
}

fn benches(c: &mut Criterion) {
    c.bench_function("id_generate", |b| {
        b.iter(|| black_box(SessionId::generate().unwrap()))
    });
    c.bench_function("storage_key", |b| {
        let id = SessionId::generate().unwrap();
        b.iter(|| black_box(id.storage_key()))
    });
    let keys = CookieKeys::new(&["bench-secret-key-0123456789abcdefghijklmnop"]);
    let value = keys.sign(&SessionId::generate().unwrap());
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        HeaderValue::from_str(&format!("theme=dark; __Host-session={value}; lang=en")).unwrap(),
    );
    c.bench_function("cookie_parse_verify", |b| {
        b.iter(|| {
            let Presented::One(raw) = find_cookie(black_box(&headers), "__Host-session") else {
                panic!()
            };
            black_box(keys.verify(raw).unwrap())
        })
    });
    for size in [200usize, 4096] {
        let r = record_of(size);
        let bytes = r.encode();
        c.bench_function(&format!("record_encode_decode_{size}B"), |b| {
            b.iter(|| black_box(Record::decode(&black_box(&r).encode()).unwrap()))
        });
        c.bench_function(&format!("record_decode_{size}B"), |b| {
            b.iter(|| black_box(Record::decode(black_box(&bytes)).unwrap()))
        });
    }
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
