//! `clusterbench origin`: runs the web service's bundled origin server in the foreground until
//! SIGINT or SIGTERM.
//!
//! When it is serving it prints one line to stdout, `READY {"http": "127.0.0.1:PORT", "objects":
//! N, "seed": S}`, which is how a supervisor (or a test) learns the port it chose. Logs go to
//! stderr.
//!
//! With `--trace FILE` (a CLF or Combined log, plain or gzip) it serves the trace's paths instead
//! of the corpus: [`trace_table`] reads the log with `loadgen::trace::clf` and hands the cluster
//! origin a plain table of (path, type, bytes) in `OriginConfig::table`; the `cluster` crate never
//! sees the log.

use std::io::Write;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use cluster::web::corpus::{self, ContentType, ObjectTable, TableObject};
use cluster::web::origin::{self, OriginConfig};
use loadgen::trace::clf;
use loadgen::trace::fit::{Kind, MEAN_BYTES};

use crate::cli::OriginArgs;
use crate::node_cmd::{StopSignals, READY_PREFIX};

pub fn run(args: OriginArgs) -> anyhow::Result<()> {
    let table = match &args.trace {
        Some(path) => {
            let (table, read) = trace_table(path, args.seed)?;
            tracing::info!(
                trace = %path.display(),
                objects = table.len(),
                "{read}"
            );
            Some(Arc::new(table))
        }
        None => None,
    };
    let config = OriginConfig {
        seed: args.seed,
        objects: args.objects,
        delay_ms: args.delay_ms,
        table,
        ..OriginConfig::default()
    };
    config.validate().context("invalid origin settings")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("origin")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut signals = StopSignals::install()?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let http = listener
            .local_addr()
            .context("reading the listen address")?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut server = tokio::spawn(origin::serve(listener, config.clone(), shutdown));
        let ready = match &config.table {
            Some(table) => serde_json::json!({
                "http": http.to_string(),
                "objects": table.len(),
                "seed": config.seed,
                "trace": args.trace.as_ref().map(|p| p.display().to_string()),
            }),
            None => serde_json::json!({
                "http": http.to_string(),
                "objects": config.objects,
                "seed": config.seed,
            }),
        };
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{READY_PREFIX}{ready}")?;
        stdout.flush()?;
        let objects = config
            .table
            .as_ref()
            .map_or(config.objects as usize, |t| t.len());
        tracing::info!(%http, objects, seed = config.seed, "origin serving");
        let result = tokio::select! {
            _ = signals.recv() => {
                tracing::info!("stopping: letting responses under way finish");
                let _ = stop.send(true);
                server.await
            }
            // The server returns early only on an error.
            result = &mut server => result,
        };
        result
            .context("the origin server's task")?
            .context("the origin server")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// What reading a trace for the origin gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TraceRead {
    /// The reader's counts (lines, entries, skipped by reason).
    pub stats: String,
    /// Entries whose path cannot be served (no path, white space, the origin's own paths).
    pub unservable: u64,
    /// Objects with no 200 response with a byte count in the trace: served at their type's mean.
    pub sized_by_mean: u64,
}

impl std::fmt::Display for TraceRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trace read: {}; {} requests with a path that cannot be served; {} objects sized at their type's mean",
            self.stats, self.unservable, self.sized_by_mean
        )
    }
}

/// The origin's table of a trace: every distinct path (query and fragment dropped; an absolute
/// URL's path) with its type (by extension) and the largest body a `200` logged for it, else its
/// type's mean size. At most [`corpus::TABLE_OBJECTS_MAX`] distinct paths: more is an error.
/// Objects are in order of first appearance; bodies are seeded by `seed`.
pub fn trace_table(path: &Path, seed: u64) -> anyhow::Result<(ObjectTable, TraceRead)> {
    let mut reader =
        clf::open(path).with_context(|| format!("opening the trace {}", path.display()))?;
    let mut order: Vec<String> = Vec::new();
    // Per path: its index in `order`, and the largest 200 body logged.
    let mut seen: HashMap<String, (usize, Option<u64>)> = HashMap::new();
    let mut read = TraceRead::default();
    for entry in reader.by_ref() {
        let entry = entry.with_context(|| format!("reading the trace {}", path.display()))?;
        let Some(object_path) = path_of_target(&entry.target) else {
            read.unservable += 1;
            continue;
        };
        let logged = (entry.status == 200).then_some(entry.bytes).flatten();
        match seen.get_mut(object_path) {
            Some((_, bytes)) => {
                if let Some(b) = logged {
                    *bytes = Some(bytes.map_or(b, |old| old.max(b)));
                }
            }
            None => {
                anyhow::ensure!(
                    order.len() < corpus::TABLE_OBJECTS_MAX,
                    "the trace {} has more than {} distinct paths (line {}): the origin serves at most that many",
                    path.display(),
                    corpus::TABLE_OBJECTS_MAX,
                    reader.stats().lines
                );
                seen.insert(object_path.to_string(), (order.len(), logged));
                order.push(object_path.to_string());
            }
        }
    }
    read.stats = reader.stats().to_string();
    anyhow::ensure!(
        !order.is_empty(),
        "the trace {} has no request the origin can serve ({read})",
        path.display()
    );
    let mut objects = Vec::with_capacity(order.len());
    for object_path in order {
        let (_, logged) = seen.remove(&object_path).unwrap_or((0, None));
        let kind = Kind::of_target(&object_path);
        let bytes = match logged {
            Some(b) => b,
            None => {
                read.sized_by_mean += 1;
                MEAN_BYTES
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(8192, |(_, mean)| *mean as u64)
            }
        };
        objects.push(TableObject {
            path: object_path,
            content_type: content_type(kind),
            bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
        });
    }
    let table =
        ObjectTable::new(seed, objects).with_context(|| format!("the trace {}", path.display()))?;
    Ok((table, read))
}

/// The path a request target names, if the origin can serve it: an absolute URL's path, query
/// and fragment dropped.
fn path_of_target(target: &str) -> Option<&str> {
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    (corpus::table_path_ok(path) && !corpus::RESERVED_PATHS.contains(&path)).then_some(path)
}

fn content_type(kind: Kind) -> ContentType {
    match kind {
        Kind::Gif => ContentType::Gif,
        Kind::Html => ContentType::Html,
        Kind::Jpeg => ContentType::Jpeg,
        Kind::Other => ContentType::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_table_dedups_paths_and_keeps_the_largest_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        std::fs::write(
            &log,
            "h - - [01/Nov/1996:00:00:00 -0800] \"GET /a.gif HTTP/1.0\" 200 1000\n\
             h - - [01/Nov/1996:00:00:01 -0800] \"GET /a.gif?x=1 HTTP/1.0\" 200 3000\n\
             h - - [01/Nov/1996:00:00:01 -0800] \"GET /a.gif HTTP/1.0\" 304 -\n\
             h - - [01/Nov/1996:00:00:02 -0800] \"GET http://x.org/p/ HTTP/1.0\" 404 10\n\
             h - - [01/Nov/1996:00:00:02 -0800] \"GET /health HTTP/1.0\" 200 2\n\
             h - - [01/Nov/1996:00:00:03 -0800] \"GET /tiny.jpg HTTP/1.0\" 200 5\n\
             garbage\n",
        )
        .unwrap();
        let (table, read) = trace_table(&log, 1).unwrap();
        let objects = table.objects();
        assert_eq!(objects.len(), 3, "{objects:?}");
        assert_eq!(
            (
                objects[0].path.as_str(),
                objects[0].content_type,
                objects[0].bytes
            ),
            ("/a.gif", ContentType::Gif, 3000)
        );
        // Never a 200 with a size: the type's mean.
        assert_eq!(
            (
                objects[1].path.as_str(),
                objects[1].content_type,
                objects[1].bytes
            ),
            ("/p/", ContentType::Html, 5131)
        );
        // Smaller than a JPEG can be: raised to the smallest.
        assert_eq!(objects[2].bytes, corpus::bytes_min(ContentType::Jpeg));
        assert_eq!((read.unservable, read.sized_by_mean), (1, 1));
        assert!(read.stats.contains("1 skipped"), "{read}");
        assert_eq!(table.body(0).unwrap().len(), 3000);
    }
}
