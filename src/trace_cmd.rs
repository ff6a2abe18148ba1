//! `clusterbench trace synth` and `clusterbench trace fit`: write a seeded synthetic web trace,
//! or measure any Common/Combined Log Format file, against TranSend's figures.
//!
//! - `trace synth --out FILE [--config synth.toml] [--seed S] [--duration-s N] [--mean-per-s R]
//!   [--objects N] [--alpha A] [--gzip]` streams `loadgen::trace::synth` into FILE (gzip with
//!   `--gzip`), fitting it as it goes, and prints what was asked next to what came out, then the
//!   fit next to TranSend's.
//! - `trace fit FILE` streams FILE (plain or gzip) through `loadgen::trace::clf` and prints the
//!   lines read and skipped (by reason, with the first line of each) and the fit. Skipped lines
//!   are reported, not fatal: exit 0 whenever the file could be read.
//!
//! Neither holds the trace: a line, the fit's counters, and the synthesizer's table of objects.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use loadgen::trace::clf;
use loadgen::trace::fit::{Fit, FitReport, Kind};
use loadgen::trace::synth::{self, ClfWriter, Synth, SynthConfig};

use crate::cli::{TraceFitArgs, TraceSynthArgs};

/// Longest synthesizer configuration file read.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;
/// Lines formatted before they are handed to the writer.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The synthesizer's settings: the file's (or the defaults), then the flags.
pub fn synth_config(args: &TraceSynthArgs) -> anyhow::Result<SynthConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = read_bounded(path, CONFIG_BYTES_MAX)?;
            toml::from_str::<SynthConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => SynthConfig::default(),
    };
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(v) = args.duration_s {
        config.duration_s = v;
    }
    if let Some(v) = args.mean_per_s {
        config.mean_per_s = v;
    }
    if let Some(v) = args.objects {
        config.objects = v;
    }
    if let Some(v) = args.alpha {
        config.alpha = v;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid trace settings: {e}"))?;
    Ok(config)
}

fn read_bounded(path: &Path, max: u64) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= max,
        "{}: {} bytes, more than the {max} a configuration may have",
        path.display(),
        meta.len()
    );
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn synth(args: TraceSynthArgs) -> anyhow::Result<()> {
    let config = synth_config(&args)?;
    let mut synth = Synth::new(config.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let file =
        File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut out = if args.gzip {
        Out::Gzip(flate2::write::GzEncoder::new(
            BufWriter::new(file),
            flate2::Compression::default(),
        ))
    } else {
        Out::Plain(BufWriter::new(file))
    };
    let mut writer = ClfWriter::new(synth.offset_s());
    let mut fit = Fit::new(config.objects);
    let mut batch = String::with_capacity(WRITE_BATCH_BYTES + 1024);
    let write_err = || format!("writing {}", args.out.display());
    while let Some(request) = synth.next() {
        fit.record_kind(
            request.time_s,
            request.kind,
            Some(request.object),
            Some(request.bytes),
        );
        writer.line(&synth, &request, &mut batch);
        if batch.len() >= WRITE_BATCH_BYTES {
            out.write_all(batch.as_bytes()).with_context(write_err)?;
            batch.clear();
        }
    }
    out.write_all(batch.as_bytes()).with_context(write_err)?;
    out.finish().with_context(write_err)?;
    let report = fit.report();
    println!(
        "wrote {} requests to {}{}",
        report.requests,
        args.out.display(),
        if args.gzip { " (gzip)" } else { "" }
    );
    print!("{}", asked_vs_got(&config, &report));
    print!("{report}");
    Ok(())
}

/// The trace file, plain or gzip.
enum Out {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
}

impl Out {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.write_all(bytes),
            Out::Gzip(w) => w.write_all(bytes),
        }
    }

    /// Writes the gzip trailer and flushes, surfacing the errors a drop would swallow.
    fn finish(self) -> std::io::Result<()> {
        let mut file = match self {
            Out::Plain(w) => w,
            Out::Gzip(w) => w.finish()?,
        };
        file.flush()?;
        file.get_ref().sync_all()
    }
}

/// What the synthesizer was asked for, next to what the trace has.
pub fn asked_vs_got(config: &SynthConfig, report: &FitReport) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "asked: seed {}, {} objects, alpha {}, {} s at a mean of {}/s",
        config.seed, config.objects, config.alpha, config.duration_s, config.mean_per_s
    );
    let _ = writeln!(text, "type    share (asked)  mean bytes (asked)");
    for kind in Kind::ALL {
        let mean = report
            .mean_bytes(kind)
            .map_or_else(|| "-".to_string(), |m| format!("{m:.0}"));
        let _ = writeln!(
            text,
            "{:<6} {:>5.1} % ({:.1} %)  {:>8} ({:.0})",
            kind.name(),
            100.0 * report.share(kind),
            100.0 * config.mix.get(kind),
            mean,
            config.mean_bytes.get(kind),
        );
    }
    match report.alpha {
        Some(a) => {
            let _ = writeln!(text, "alpha {:.2} (asked {})", a.alpha, config.alpha);
        }
        None => {
            let _ = writeln!(
                text,
                "alpha - (asked {}): too few requests to fit",
                config.alpha
            );
        }
    }
    text
}

pub fn fit(args: TraceFitArgs) -> anyhow::Result<()> {
    let path = &args.file;
    let mut reader = clf::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut fit = Fit::new(synth::OBJECTS_MAX);
    for entry in reader.by_ref() {
        let entry = entry.with_context(|| format!("reading {}", path.display()))?;
        fit.record(entry.time_ms.div_euclid(1000), &entry.target, entry.bytes);
    }
    println!("read {}: {}", path.display(), reader.stats());
    print!("{}", fit.report());
    Ok(())
}
