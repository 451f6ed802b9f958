//! Active-active on the real engines (`world`): producers in all three regions type into the
//! same documents at once, each into its own region's log, while seeded cuts isolate a region
//! at a time; the mirrors run in the source regions, pushing across the links. Every region converges to the same text, the reference fold of every op; every
//! op is acked once; and a reader in each region never sees a projection go back to an older
//! version. `DOCFOLD_AA_SEED` picks the cuts and the typing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use docfold::config::JobConfig;
use docfold::lseq::{Op, Replica, doc_seed};
use docfold::region::Mode;
use docfold::sim::MirrorMode;
use docfold::sink::projection::{DynamoProjections, ProjectionStore, ProjectionUrl};

use crate::world::{REGIONS, World, produce, start_processes, wait_until};

/// `n` keystrokes of one editor (site `site`): letters at a caret that jumps now and then,
/// and backspaces, seeing nobody else's edits (the other regions type concurrently).
fn typing(site: u64, n: usize, rng: &mut StdRng) -> Vec<Op> {
    let mut editor = Replica::new(doc_seed("shared"), site);
    let mut caret = 0;
    (0..n)
        .map(|_| {
            if rng.random_bool(0.05) {
                caret = rng.random_range(0..=editor.len());
            }
            if caret > 0 && rng.random_bool(0.15) {
                caret -= 1;
                editor.local_edit(caret, 1, "").expect("backspace")
            } else {
                caret += 1;
                editor.local_edit(caret - 1, 0, if rng.random_bool(0.1) { " " } else { "x" }).expect("type")
            }
        })
        .collect()
}

/// Reads region `r`'s projections of `docs` until `done`; returns every time a version went
/// back (document, from, to).
async fn watch_versions(
    config: JobConfig,
    docs: Vec<String>,
    done: Arc<AtomicBool>,
) -> Vec<(String, u64, u64)> {
    let ProjectionUrl::DynamoDb { table } =
        ProjectionUrl::parse(config.projection.url.expose()).expect("url")
    else {
        panic!("the world's projections are DynamoDB tables");
    };
    let projections = DynamoProjections::open(&config.projection, &table).await;
    let (mut seen, mut regressions) = (HashMap::<String, u64>::new(), Vec::new());
    while !done.load(Ordering::Relaxed) {
        for doc in &docs {
            if let Ok(Some(item)) = projections.get(doc).await {
                let last = seen.entry(doc.clone()).or_default();
                if item.version < *last {
                    regressions.push((doc.clone(), *last, item.version));
                }
                *last = item.version.max(*last);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    regressions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_active_regions_converge_while_links_are_cut() {
    let seed = std::env::var("DOCFOLD_AA_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0xaa);
    let mut rng = StdRng::seed_from_u64(seed);
    let world = World::start(Mode::ActiveActive).await;
    let docs: Vec<String> = (0..2).map(|i| format!("shared-{i}")).collect();
    let ops: Vec<Vec<Op>> = (0..REGIONS.len()).map(|x| typing(100 + x as u64, 6_000, &mut rng)).collect();
    let mut processes = start_processes(&world, MirrorMode::Push);
    let rt = tokio::runtime::Handle::current();
    let done = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = (0..REGIONS.len())
        .map(|r| {
            let config = JobConfig::load(&world.regions[r].file).expect("job file");
            let (docs, done) = (docs.clone(), done.clone());
            rt.spawn(watch_versions(config, docs, done))
        })
        .collect();
    let mut reference = Replica::new(doc_seed("shared"), 999);
    for op in ops.iter().flatten() {
        reference.apply(op).expect("applies");
    }
    let want = reference.text();
    let acks = Mutex::new(Vec::new());
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            for (x, ops) in ops.iter().enumerate() {
                let (acks, docs, world, rt) = (&acks, &docs, &world, &rt);
                scope.spawn(move || produce(world, x, (docs, ops, 100), acks, rt));
            }
            // Seeded cuts: a region at a time loses every link, then gets them back.
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(rng.random_range(500..2_000)));
                let r = rng.random_range(0..REGIONS.len());
                eprintln!("seed {seed}: cutting {}", REGIONS[r]);
                world.set_links(r, false);
                std::thread::sleep(Duration::from_millis(rng.random_range(1_000..3_000)));
                world.set_links(r, true);
            }
        });
        let converged = wait_until("every region converges", Duration::from_secs(120), || {
            world.converged(&rt, &docs, &want)
        });
        eprintln!("seed {seed}: converged {converged:?} after the last write");
        // Projections follow the flush window.
        std::thread::sleep(Duration::from_millis(800));
    });
    done.store(true, Ordering::Relaxed);
    for (r, watcher) in watchers.into_iter().enumerate() {
        let regressions = watcher.await.expect("watcher");
        assert!(
            regressions.is_empty(),
            "seed {seed}: {}'s projections went back: {regressions:?}",
            REGIONS[r]
        );
    }
    let acks = acks.into_inner().expect("acks");
    for (x, name) in REGIONS.iter().enumerate() {
        let acked: usize = acks.iter().filter(|a| a.producer == x).map(|a| a.ops).sum();
        assert_eq!(acked, ops[x].len() * docs.len(), "seed {seed}: {name}: every batch acked once");
        assert!(
            acks.iter().filter(|a| a.producer == x).all(|a| a.region == x),
            "{name} wrote to its own log"
        );
    }
    for process in &mut processes {
        let exited = process.0.try_wait().expect("status");
        assert!(exited.is_none(), "no process gives up during the cuts (logs in {})", world.dir.display());
    }
    drop(processes);
    for (r, name) in REGIONS.iter().enumerate() {
        let differ = world.differing(r, &docs, &want).await;
        assert!(differ.is_empty(), "seed {seed}: {name}: {differ:?} differ from the reference fold");
    }
}
