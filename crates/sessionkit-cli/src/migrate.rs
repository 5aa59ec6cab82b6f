//! `migrate`: copying every live session to another store, or staging Flask-Session's for
//! import on first sight, with a progress bar.

use sessionkit::admin::Sessions;
use sessionkit::clock::{Clock as _, SystemClock};
use sessionkit::flask::{BulkItem, FlaskBulkSource};
use sessionkit::store::{SessionLimit, SessionStore};
use sessionkit::Config;

/// Copies every live session of `src` into `dst`, `batch` at a time; sessions already there stay.
pub(crate) async fn migrate(
    src: &Sessions,
    dst: &dyn SessionStore,
    batch: usize,
) -> anyhow::Result<()> {
    let now = src.now();
    let total = src.count().await.unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} sessions {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut copied, mut existing, mut expired, mut ended) = (0u64, 0u64, 0u64, 0u64);
    let mut cursor = None;
    loop {
        let page = src.scan(cursor.take(), batch.max(1)).await?;
        for (k, r) in &page.records {
            bar.inc(1);
            if r.meta.is_expired(now) {
                expired += 1;
                continue;
            }
            match dst.create(k, r, SessionLimit::UNLIMITED, now).await? {
                sessionkit::store::CreateOutcome::Created { .. } => {
                    // Ended while it was copied (an app migrating with SESSION_MIGRATE_FROM ends
                    // sessions in the source first, then the destination): the copy goes too.
                    if src.get(k).await?.is_none() {
                        dst.destroy(k).await?;
                        ended += 1;
                    } else {
                        copied += 1;
                    }
                }
                _ => existing += 1,
            }
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    bar.finish_and_clear();
    println!("copied {copied}, already present {existing}, expired skipped {expired}");
    if ended > 0 {
        println!("{ended} session(s) ended while being copied: their copies were removed");
    }
    Ok(())
}

/// Stages every live Flask session of `src` in `dst` for import on first sight.
pub(crate) async fn migrate_flask(
    src: &FlaskBulkSource,
    dst: &dyn SessionStore,
    config: &Config,
) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let bar = indicatif::ProgressBar::no_length();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} Flask sessions {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let (mut copied, mut existing, mut expired, mut unparseable) = (0u64, 0u64, 0u64, 0u64);
    let mut cursor = None;
    loop {
        let (items, next) = src.page(cursor.take(), config, now).await?;
        for item in items {
            bar.inc(1);
            match item {
                BulkItem::Live(key, record) => {
                    match dst
                        .create(&key, &record, SessionLimit::UNLIMITED, now)
                        .await?
                    {
                        sessionkit::store::CreateOutcome::Created { .. } => copied += 1,
                        _ => existing += 1,
                    }
                }
                BulkItem::Expired => expired += 1,
                _ => unparseable += 1,
            }
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    bar.finish_and_clear();
    println!(
        "staged {copied} Flask session(s) for import on first sight, already staged {existing}, \
         expired skipped {expired}, unparseable {unparseable}"
    );
    Ok(())
}
